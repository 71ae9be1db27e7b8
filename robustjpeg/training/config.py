"""A training run's settings: TrainConfig, the per-family recipes that fill its gaps, and the checks on its flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from robustjpeg.data.preprocess import Preprocess, parse_input_size
from robustjpeg.errors import ConfigError
from robustjpeg.models.factory import VARIANTS
from robustjpeg.models.jpeg import INITS as JPEG_INITS
from robustjpeg.models.jpeg import STEP_MAX

DEFAULT_ARCH = {"mnist": "smallcnn", "cifar": "resnet20", "fine": "torchvision:resnet18"}


# Backbone recipes per data family (DESIGN.md §3); milestones are fractions of the epoch count.
RECIPES = {
    "mnist": {"epochs": 4, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-4, "milestones": (0.5, 0.75)},
    "cifar": {"epochs": 240, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "milestones": (0.625, 0.75, 0.875)},
    "fine": {"epochs": 200, "batch_size": 64, "lr": 0.1, "weight_decay": 1e-4, "milestones": (0.5, 0.75)},
}


# Flags that may differ between a run and its resumption (a resumed run takes its tables from the checkpoint, so
# the baseline it was initialised from may have moved).
RESUME_FREE = ("device", "compile", "progress", "data_root", "download", "workers", "init_from")


@dataclass
class TrainConfig:
    """A training run. None means "the data family's recipe" (RECIPES), filled in by resolved().

    recipe: the family whose recipe applies (default: the data's, see robustjpeg.data.datasets.family_of); input_size,
    resize, crop_pct, interpolation: the crop size and test-time resize (robustjpeg.data.preprocess); channels: read
    every image with 1 or 3 channels (default: grey only when every image is).
    """

    dataset: str = "mnist5k"
    arch: str | None = None
    variant: str = "baseline"
    jpeg_alpha: float | None = None
    jpeg_hardness: float | None = None
    jpeg_init: str = "standard"
    jpeg_quality: int = 50
    jpeg_constant: float | None = None
    init_from: str | None = None
    q_max: float | None = None
    chroma_offset: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    jpeg_lr: float = 3e-3
    jpeg_weight_decay: float = 0.0
    seed: int = 0
    train_subset: int | None = None
    data_root: str | None = None
    download: bool = False
    compile: bool = False
    device: str = "auto"
    progress: bool | None = None
    workers: int = 4
    recipe: str | None = None
    input_size: tuple[int, int] | None = None
    resize: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    channels: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Sequences as tuples and an input size as (H, W), however they were given (CLI, TOML, JSON, Python)."""
        if self.milestones is not None:
            self.milestones = tuple(self.milestones)
        if self.input_size is not None:
            self.input_size = parse_input_size(self.input_size)

    def resolved(self, family: str) -> TrainConfig:
        """Fill unset fields from the family recipe and check the combination."""
        recipe = RECIPES[family]
        epochs = self.epochs if self.epochs is not None else recipe["epochs"]
        milestones = self.milestones
        if milestones is None:
            milestones = tuple(sorted({max(1, round(f * epochs)) for f in recipe["milestones"]}))
        cfg = replace(self, arch=self.arch or DEFAULT_ARCH[family], epochs=epochs,
                      batch_size=self.batch_size or recipe["batch_size"],
                      lr=self.lr if self.lr is not None else recipe["lr"],
                      weight_decay=self.weight_decay if self.weight_decay is not None else recipe["weight_decay"],
                      milestones=tuple(int(m) for m in milestones))
        validate(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (paths as strings), so checkpoints stay loadable with weights_only=True."""
        d = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for key in ("milestones", "input_size"):
            d[key] = None if d[key] is None else list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def preprocess(self) -> Preprocess:
        """The crop size and test-time resize asked for (unset fields come from the data)."""
        return Preprocess(self.input_size, self.resize, self.crop_pct, self.interpolation)


def validate(cfg: TrainConfig) -> None:
    """Reject flag combinations that make no sense, naming the flag to change."""
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, not {cfg.variant!r}")
    if cfg.jpeg_alpha is not None and cfg.jpeg_hardness is not None:
        raise ConfigError("--alpha and --hardness both set the quantiser's softness; give one of them")
    if cfg.variant == "baseline" and (cfg.jpeg_alpha is not None or cfg.jpeg_hardness is not None):
        raise ConfigError("--alpha/--hardness configure a JPEG layer; add --jpeg or --jpeg-fixed QUALITY")
    if cfg.jpeg_init not in JPEG_INITS:
        raise ConfigError(f"--jpeg-init must be one of {', '.join(JPEG_INITS)}, not {cfg.jpeg_init!r}")
    if cfg.variant == "baseline" and (cfg.jpeg_init != "standard" or cfg.init_from or cfg.chroma_offset):
        raise ConfigError("--jpeg-init/--init-from/--official-chroma-offset configure a JPEG layer; "
                          "add --jpeg or --jpeg-fixed QUALITY")
    if (cfg.jpeg_init == "constant") != (cfg.jpeg_constant is not None):
        raise ConfigError("--jpeg-init constant and --jpeg-constant STEP go together")
    if (cfg.jpeg_init == "sensitivity") != bool(cfg.init_from):
        raise ConfigError("--jpeg-init sensitivity and --init-from BASELINE_CHECKPOINT go together")
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise ConfigError(f"--init-from {cfg.init_from} is not a file; pass a trained baseline checkpoint.pt")
    if cfg.q_max is not None and cfg.jpeg_init != "sensitivity":
        raise ConfigError("--q-max sets the largest luma step of the sensitivity tables; it needs --jpeg-init sensitivity")
    if cfg.q_max is not None and not 0 < cfg.q_max <= STEP_MAX:
        raise ConfigError(f"--q-max must lie in (0, {STEP_MAX:g}] (the paper uses 10 for CIFAR, 5 for fine-grained "
                          f"data), got {cfg.q_max}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must lie in 1..100, got {cfg.jpeg_quality}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.train_subset is not None and cfg.train_subset < 1:
        raise ConfigError(f"--train-subset must be at least 1, got {cfg.train_subset}")
    if cfg.lr <= 0 or cfg.jpeg_lr <= 0:
        raise ConfigError("--lr and --jpeg-lr must be positive")
    if list(cfg.milestones) != sorted(set(cfg.milestones)) or any(m < 1 for m in cfg.milestones):
        raise ConfigError(f"--milestones must be increasing positive epochs, got {list(cfg.milestones)}")
