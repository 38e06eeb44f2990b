"""The distillation pipeline: the run context, the round loop (FDD) and the self-guided iterations (SIKeD)."""
