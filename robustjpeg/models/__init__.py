"""Stage 2, models: the JPEG layer, the architectures, checkpoints and loading of any model."""
