"""Weight-only PTQ methods (and the 16-bit baseline): one file per method, discovered."""
