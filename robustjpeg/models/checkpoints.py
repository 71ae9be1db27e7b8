"""Our training checkpoints: the format's schema, and reading one back into the model it describes.

Training writes them (``robustjpeg.training.loop.save_checkpoint``); everything that evaluates a model reads them
here, so loading a model never imports the training stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robustjpeg.errors import CheckpointError
from robustjpeg.models.factory import JpegModel, ModelSpec, build_model, strip_prefixes

SCHEMA = "robustjpeg.checkpoint/1"


def read_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only) and check its schema."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        raise CheckpointError(f"{path} is not a robustjpeg training checkpoint (schema {SCHEMA} expected); "
                              "load third-party files with robustjpeg eval")
    return ckpt


def load_trained(path: Path | str, device: torch.device | str = "cpu") -> tuple[JpegModel, ModelSpec, dict]:
    """Rebuild a model from one of our checkpoints alone: (model in eval mode, spec, checkpoint dict)."""
    ckpt = read_checkpoint(path, "cpu")
    spec = ModelSpec.from_dict(ckpt["model_spec"])
    model = build_model(spec)
    try:
        model.load_state_dict(strip_prefixes(ckpt["state_dict"], model.state_dict()), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the {spec.arch} spec they came with ({exc})") from exc
    return model.to(device).eval(), spec, ckpt
