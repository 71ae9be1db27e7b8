"""robustjpeg: adversarial-robustness benchmarks built around the trainable JPEG layer of JPEG-DL.

The public surface, for scripts and notebooks (the CLI calls the same functions):

    import robustjpeg
    run = robustjpeg.evaluate(model, "cifar10", "quick", n=500)   # model: an nn.Module taking [0, 1] images
    run.at(8 / 255), run.verdict.status, run.to_frame()
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> "module:attribute"; imported on first use, so `import robustjpeg` (and the CLI's start-up) stays light
_PUBLIC = {
    "evaluate": "robustjpeg.pipeline:evaluate", "Evaluation": "robustjpeg.pipeline:Evaluation",
    "load_model": "robustjpeg.models.loading:load_model", "load_dataset": "robustjpeg.data.datasets:load_dataset",
    "load_suite": "robustjpeg.attacks.suites:load_suite", "JpegLayer": "robustjpeg.models.jpeg:JpegLayer",
    "jpeg_mode": "robustjpeg.models.jpeg:jpeg_mode", "create_model": "robustjpeg.models.factory:create_model",
    "train": "robustjpeg.training.loop:train", "TrainConfig": "robustjpeg.training.loop:TrainConfig",
    "write_report": "robustjpeg.report.markdown:write_report", "compare": "robustjpeg.report.compare:compare_runs",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'robustjpeg' has no attribute {name!r}")
    import importlib

    module, attribute = _PUBLIC[name].split(":")
    value = globals()[name] = getattr(importlib.import_module(module), attribute)
    return value
