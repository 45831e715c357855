"""bitsweep harness: CLI, Hydra app, run pipeline, models, data, evaluators, store, studies.

Imported as ``bitsweep.harness``; see ``docs/architecture.md`` for the map.
"""
from bitsweep.kernels._checkout import drop_checkout_root

drop_checkout_root()  # a checkout root on sys.path would shadow PyPI's `kernels`
