"""Stage 3, training: the recipe and the loop for baselines and JPEG-DL models."""
