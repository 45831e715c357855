"""Studies: first-class run types beyond a single evaluator (one module per study).

A study is registered like an evaluator (``bitsweep.harness.eval.base.EVALUATORS``) so
that it is recorded in the store, resumable, and swept by Hydra like anything else.
"""
