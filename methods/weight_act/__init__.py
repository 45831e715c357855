"""Weight-activation PTQ methods and transforms (SmoothQuant, LLM.int8(), rotation, ...)."""
