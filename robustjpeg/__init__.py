"""robustjpeg: adversarial-robustness benchmarks built around the trainable JPEG layer of JPEG-DL."""

__version__ = "0.1.0"
