"""Stage 1, data: data sets by name, image files, preprocessing and evaluation splits."""
