"""Probe a model on a few clean batches before any attack: broken outputs stop the run, a poor fit warns.

A sweep of a model that returns NaN, or probabilities instead of logits, measures nothing; a model evaluated
without the normalisation it was trained with measures the wrong thing (a third-party CIFAR-10 ResNet-20 without
its mean/std scored 29% clean on 256 JPEG test images, against about 81% with it). Both show on a few hundred images.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from robustjpeg.errors import CheckpointError, RobustJpegWarning
from robustjpeg.models.info import ModelInfo
from robustjpeg.utils.stats import mcnemar_exact

PROBE_IMAGES, PROBE_BATCH = 256, 128
# Normalisations third-party models are commonly trained with, tried on a third-party model given none.
COMMON_NORMALISATIONS = {
    3: {"ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "CIFAR-10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), "0.5": ((0.5,) * 3, (0.5,) * 3)},
    1: {"MNIST": ((0.1307,), (0.3081,)), "0.5": ((0.5,), (0.5,))},
}
NORMALISABLE = ("state_dict", "safetensors", "pickled-module")  # formats that take --mean/--std


def probe_model(model: nn.Module, info: ModelInfo, x: Tensor, y: Tensor, num_classes: int, data_name: str,
                device: torch.device, name: str | None = None) -> None:
    """Refuse NaN/inf or probability outputs on clean images; warn when clean accuracy says the model misses the data.

    x, y: the evaluation images (the first PROBE_IMAGES are used); name: the model's name where several are probed.
    """
    x, y = x[:PROBE_IMAGES], y[:PROBE_IMAGES].to(device)
    prefix = f"model {name}: " if name else ""
    logits = _scores(model, x, device)
    try:
        _refuse_broken(model, logits, data_name)
    except CheckpointError as exc:
        raise CheckpointError(prefix + str(exc)) from exc
    correct = logits.argmax(1) == y
    hint = None
    if info.format in NORMALISABLE and info.mean is None:
        hint = _normalisation_hint(model, x, y, correct, device, data_name)
    hint = hint or _chance_hint(correct, num_classes, data_name)
    if hint:
        warnings.warn(RobustJpegWarning(prefix + hint), stacklevel=2)


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    return torch.cat([model(chunk.to(device)).float() for chunk in x.split(PROBE_BATCH)])


def _refuse_broken(model: nn.Module, logits: Tensor, data_name: str) -> None:
    n = len(logits)
    bad = int((~torch.isfinite(logits)).any(1).sum())
    if bad:
        weights = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        cause = (f"its weights hold NaN/inf ({', '.join(weights[:3])}): the checkpoint is damaged, retrain or fetch "
                 "it again" if weights else "check its normalisation (a zero std divides by zero) and its forward")
        raise CheckpointError(f"the model returns NaN or inf scores for {bad} of {n} clean images of {data_name}; "
                              f"attacks and checks need finite logits: {cause}")
    if bool((logits >= 0).all()) and float((logits.sum(1) - 1).abs().max()) < 1e-3:
        raise CheckpointError(f"the model returns probabilities on {data_name} (each of {n} output rows is >= 0 and "
                              "sums to 1), but attacks and checks need logits: remove its final softmax, or wrap it "
                              "so that forward returns the scores before the softmax")


def _chance_hint(correct: Tensor, num_classes: int, data_name: str) -> str | None:
    accuracy, chance = float(correct.float().mean()), 1.0 / num_classes
    if accuracy >= chance + 0.1 * (1 - chance):
        return None
    return (f"clean accuracy {accuracy:.1%} on {len(correct)} images of {data_name} is near chance ({chance:.1%} for "
            f"{num_classes} classes): the model does not fit this data as given; likely causes: missing "
            "normalisation (--mean/--std), another class order or data set (--dataset), another input size "
            "(--input-size) or architecture (--arch)")


def _normalisation_hint(model: nn.Module, x: Tensor, y: Tensor, correct: Tensor, device: torch.device,
                        data_name: str) -> str | None:
    """Name the normalisation under which the model fits the data far better than as given, if there is one."""
    trials = dict(COMMON_NORMALISATIONS.get(x.shape[1], {}))
    own = x.transpose(0, 1).flatten(1)
    trials["these images' own"] = (tuple(own.mean(1).tolist()), tuple(own.std(1).clamp_min(1e-3).tolist()))
    best = None
    for label, (mean, std) in trials.items():
        shape = (1, -1, 1, 1)
        normalised = (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
        ok = _scores(model, normalised, device).argmax(1) == y
        if best is None or ok.sum() > best[0].sum():
            best = (ok, label, mean, std)
    ok, label, mean, std = best
    gain = float(ok.float().mean() - correct.float().mean())
    if gain < 0.1 or mcnemar_exact(int((correct & ~ok).sum()), int((ok & ~correct).sum())) >= 0.01:
        return None
    flags = f"--mean {_csv(mean)} --std {_csv(std)}"
    return (f"clean accuracy {correct.float().mean():.1%} on {len(y)} images of {data_name} as given, but "
            f"{ok.float().mean():.1%} with inputs normalised by {label} mean/std: the model most likely expects "
            f"normalised inputs and is evaluated without them; pass {flags} (or mean/std in its spec)")


def _csv(values: tuple) -> str:
    return ",".join(f"{v:.4g}" for v in values)
