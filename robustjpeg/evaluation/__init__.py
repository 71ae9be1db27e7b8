"""Stage 5, evaluation: the sweep engine, its result files, the sanity checks and the verdict."""
