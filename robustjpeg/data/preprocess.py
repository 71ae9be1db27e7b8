"""How images reach a model: shorter side resized, centre crop at the input size (timm's eval); crops for training.

Images stay float in [0, 1]: normalisation lives inside the model (DESIGN.md §2). The geometry follows timm's
``transforms_imagenet_eval`` with ``crop_mode="center"``: the shorter side goes to ``resize`` (default
``floor(max(H, W) / crop_pct)``), then the centre ``H x W`` is cut out. ``resize = 0`` crops without resizing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from robustjpeg.errors import BadInput, ConfigError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
NO_RESIZE = 0


def parse_input_size(value: Any) -> tuple[int, int]:
    """32, "32", "32x32", "32,32", "32 32" or [32, 32] -> (H, W)."""
    parts = [value] if isinstance(value, int) else value
    if isinstance(parts, str):
        parts = parts.replace("x", ",").replace(" ", ",").split(",")
        parts = [p for p in parts if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"input size {value!r} is not N or H,W (e.g. 32 or 224,224)") from exc
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise ConfigError(f"input size {value!r} is not N or H,W with positive sizes (e.g. 32 or 224,224)")
    return sizes * 2 if len(sizes) == 1 else sizes


@dataclass(frozen=True)
class Preprocess:
    """The eval geometry: input size (H, W), shorter-side resize, crop fraction and interpolation; None = unset."""

    input_size: tuple[int, int] | None = None
    resize: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None:
            object.__setattr__(self, "input_size", parse_input_size(self.input_size))
        if self.resize is not None and (isinstance(self.resize, bool) or int(self.resize) != self.resize
                                        or self.resize < 0):
            raise ConfigError(f"--resize {self.resize!r} must be a whole number of pixels (0: centre-crop only)")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ConfigError(f"--crop-pct {self.crop_pct!r} must lie in (0, 1], e.g. 0.875")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"--interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")

    @property
    def explicit(self) -> bool:
        """A resize, crop or interpolation was asked for: every image then goes through the resize and crop."""
        return any(v is not None for v in (self.resize, self.crop_pct, self.interpolation))

    def over(self, *defaults: Preprocess | None) -> Preprocess:
        """These values, each unset one taken from the first of `defaults` that sets it."""
        values = asdict(self)
        for default in filter(None, defaults):
            values = {k: v if v is not None else getattr(default, k) for k, v in values.items()}
        return Preprocess(**values)

    def complete(self) -> Preprocess:
        """Every field set: crop_pct 1 and bilinear unless given, resize from the crop fraction."""
        if self.input_size is None:
            raise BadInput("no input size is known for resizing; pass --input-size H[,W]")
        crop_pct = 1.0 if self.crop_pct is None else self.crop_pct
        resize = self.resize if self.resize is not None else math.floor(max(self.input_size) / crop_pct)
        return replace(self, resize=resize, crop_pct=crop_pct, interpolation=self.interpolation or "bilinear")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML types (input size as [H, W]); unset fields left out."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if "input_size" in d:
            d["input_size"] = list(d["input_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Preprocess:
        fields = ("input_size", "resize", "crop_pct", "interpolation")
        return cls(**{k: v for k, v in (d or {}).items() if k in fields and v is not None})


def timm_defaults(model: Any) -> Preprocess | None:
    """Input size, crop_pct and interpolation of a timm model's pretrained_cfg (None for other models)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        return None
    size = cfg.get("input_size")
    return Preprocess(input_size=tuple(size[-2:]) if size else None, crop_pct=cfg.get("crop_pct"),
                      interpolation=cfg.get("interpolation") if cfg.get("interpolation") in INTERPOLATIONS else None)


def _mode(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def fit_image(img, pre: Preprocess):
    """Resize one PIL image's shorter side to pre.resize and cut out the centre pre.input_size (pre complete)."""
    from torchvision.transforms import functional as TF

    h, w = pre.input_size
    if pre.resize != NO_RESIZE:
        img = TF.resize(img, pre.resize, interpolation=_mode(pre.interpolation))
    if img.height < h or img.width < w:
        how = "--resize 0 forbids resizing" if pre.resize == NO_RESIZE else f"after resizing to --resize {pre.resize}"
        raise BadInput(f"is {img.width}x{img.height} ({how}), smaller than the input size {h}x{w}; lower --input-size, "
                       f"or let the shorter side reach {max(h, w)} with --resize")
    return TF.center_crop(img, [h, w])


def eval_transform(pre: Preprocess) -> Callable:
    """PIL image -> float CHW in [0, 1]: resize and centre crop, as at test time."""
    from torchvision import transforms as T

    return T.Compose([functools.partial(fit_image, pre=pre), T.ToTensor()])


def train_transform(pre: Preprocess, family: str) -> Callable:
    """Per-family training crops of one PIL image: random resized crop + flip (fine), padded crop + flip (cifar)."""
    from torchvision import transforms as T

    h, w = pre.input_size
    if family == "fine":
        steps = [T.RandomResizedCrop((h, w), interpolation=_mode(pre.interpolation)), T.RandomHorizontalFlip()]
    elif family == "cifar":
        steps = [functools.partial(fit_image, pre=pre), T.RandomCrop((h, w), padding=4), T.RandomHorizontalFlip()]
    else:
        steps = [functools.partial(fit_image, pre=pre)]
    return T.Compose([*steps, T.ToTensor()])
