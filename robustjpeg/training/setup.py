"""What a run builds before its first step: the model spec, the JPEG tables' start, the optimisers and their rates."""

from __future__ import annotations

import torch
from torch import Tensor

from robustjpeg.data.datasets import Dataset, TensorSplit, stratified_indices
from robustjpeg.errors import ConfigError
from robustjpeg.models.checkpoints import load_trained
from robustjpeg.models.factory import JpegModel, ModelSpec
from robustjpeg.models.jpeg import JpegLayer, init_abs_avg, init_sensitivity
from robustjpeg.training.config import TrainConfig

SENSITIVITY_IMAGES = 10_000  # the official code estimates sensitivity on at least 10,000 training images


DEFAULT_Q_MAX = 10.0  # largest luma step of the sensitivity tables: the paper's CIFAR setting (5 for fine-grained)


def make_spec(cfg: TrainConfig, ds: Dataset) -> ModelSpec:
    """The model spec for this config and dataset (JPEG layer config from JpegLayer.config())."""
    jpeg = None
    if cfg.variant != "baseline":
        trainable = cfg.variant == "jpeg"
        layer = JpegLayer(channels=ds.in_channels, alpha=5.0 if cfg.jpeg_alpha is None else cfg.jpeg_alpha,
                          hardness=cfg.jpeg_hardness, init=cfg.jpeg_init, quality=cfg.jpeg_quality,
                          constant=cfg.jpeg_constant, trainable=trainable, chroma_offset=cfg.chroma_offset)
        jpeg = {**layer.config(), "trainable": trainable}
    return ModelSpec(cfg.arch, len(ds.classes), ds.in_channels, tuple(ds.mean), tuple(ds.std), ds.input_size, jpeg,
                     preprocess=ds.applied.to_dict() if ds.applied else None)


def init_tables(model: JpegModel, cfg: TrainConfig, ds: Dataset, device: torch.device) -> None:
    """Data-driven table starts, trainable or frozen: abs_avg from training images, sensitivity from a trained baseline.

    Sensitivity, as in the official code: mean squared loss gradient per DCT coefficient of the baseline over
    min(10,000, all) of the run's training images (its train_subset when set), steps ~ 1/sensitivity with the
    largest luma step q_max. A frozen control with the same recipe and init_from gets the very same tables.
    """
    if cfg.variant == "baseline" or cfg.jpeg_init not in ("abs_avg", "sensitivity"):
        return
    if cfg.jpeg_init == "abs_avg":
        x, _ = _sample_batch(ds, min(1024, len(ds.train)), cfg.seed)
        init_abs_avg(model.jpeg, x.to(device))
        return
    baseline, spec, _ = load_trained(cfg.init_from, device)
    if spec.jpeg is not None:
        raise ConfigError(f"--init-from {cfg.init_from} is a {spec.variant} model; sensitivity needs a baseline")
    pool = training_indices(ds, cfg)
    with torch.random.fork_rng(devices=[]):  # random crops of file data repeat, and leave training's RNG alone
        torch.manual_seed(cfg.seed)
        x, y = _sample_batch(ds, min(SENSITIVITY_IMAGES, len(pool)), cfg.seed, pool)
    init_sensitivity(model.jpeg, baseline, x.to(device), y.to(device),
                     q_max=DEFAULT_Q_MAX if cfg.q_max is None else cfg.q_max)


def _sample_batch(ds: Dataset, n: int, seed: int, pool: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """n class-stratified training images in [0, 1] with labels, drawn from `pool` (training indices; default all)."""
    pool = torch.arange(len(ds.train)) if pool is None else pool
    idx = pool[stratified_indices(ds.train.y[pool], n, seed)]
    if isinstance(ds.train, TensorSplit):
        return ds.train.x[idx].float() / 255.0, ds.train.y[idx]
    items = [ds.train[i] for i in idx.tolist()]
    return torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])


def training_indices(ds: Dataset, cfg: TrainConfig) -> Tensor:
    """Indices of the training images a run uses: all of them, or its fixed stratified train_subset."""
    if cfg.train_subset is None:
        return torch.arange(len(ds.train))
    if cfg.train_subset > len(ds.train):
        raise ConfigError(f"--train-subset {cfg.train_subset} exceeds the {len(ds.train)} training images")
    return stratified_indices(ds.train.y, cfg.train_subset, cfg.seed)


def make_optimisers(model: JpegModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD with momentum for the backbone; a separate Adam for the JPEG tables (DESIGN.md §3)."""
    decay = [p for p in model.backbone_parameters() if p.ndim > 1]
    no_decay = [p for p in model.backbone_parameters() if p.ndim <= 1]
    opts: list[torch.optim.Optimizer] = [torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum)]
    if model.jpeg_parameters():
        opts.append(torch.optim.Adam(model.jpeg_parameters(), lr=cfg.jpeg_lr, weight_decay=cfg.jpeg_weight_decay))
    return opts


def backbone_lr(cfg: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * 0.1 per milestone passed; a pure function of the epoch, so resume needs no scheduler object."""
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)
