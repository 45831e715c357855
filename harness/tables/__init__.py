"""Paper tables: published cells with provenance, the sweeps that reproduce them, renders."""
