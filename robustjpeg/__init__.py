"""robustjpeg: adversarial-robustness benchmarks built around the trainable JPEG layer of JPEG-DL.

The public surface, for scripts and notebooks (the CLI calls the same functions):

    import robustjpeg
    run = robustjpeg.evaluate(model, "cifar10", "quick", n=500)   # model: an nn.Module taking [0, 1] images
    run.at(8 / 255), run.verdict.status, run.to_frame()
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> module; imported on first use, so `import robustjpeg` (and the CLI's start-up) stays light
_PUBLIC = {"evaluate": "robustjpeg.pipeline", "Evaluation": "robustjpeg.pipeline", "load_model": "robustjpeg.models.loading",
           "load_dataset": "robustjpeg.data.datasets", "load_suite": "robustjpeg.attacks.adapters", "JpegLayer": "robustjpeg.models.jpeg",
           "jpeg_mode": "robustjpeg.models.jpeg", "create_model": "robustjpeg.models.factory", "write_report": "robustjpeg.report.markdown",
           "compare_runs": "robustjpeg.report.compare"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'robustjpeg' has no attribute {name!r}")
    import importlib

    value = globals()[name] = getattr(importlib.import_module(_PUBLIC[name]), name)
    return value
