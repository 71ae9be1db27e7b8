"""Small real models for the sweep tests: a tiny CNN trained for a few seconds on the mnist5k training digits."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from torch import nn

from robustjpeg.data.datasets import eval_tensors, load_dataset


def tiny_cnn() -> nn.Module:
    """Two strided convolutions and a linear head; no batch norm, so each sample's result ignores its batch."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@cache
def trained_cnn(epochs: int = 2, seed: int = 0) -> nn.Module:
    """tiny_cnn trained on the 4,000 mnist5k training digits (about 90% on its test digits), in eval mode."""
    return _fit(lambda model, x, y: x, epochs, seed)


def _fit(inputs, epochs: int, seed: int) -> nn.Module:
    """tiny_cnn trained with Adam on batches of 64 mnist5k training digits, each batch first turned into
    inputs(model, x, y) (the digits themselves, or adversarial examples)."""
    torch.manual_seed(seed)
    train = load_dataset("mnist5k").train
    xt, yt = train.x.float() / 255, train.y
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(yt)).split(64):
            x = inputs(model, xt[batch], yt[batch])
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), yt[batch]).backward()
            opt.step()
    return model.eval()


def eval_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n class-stratified mnist5k test digits (float in [0, 1]) and their labels, as the sweep command picks them."""
    x, y, _ = eval_tensors(load_dataset("mnist5k"), n, seed=0)
    return x, y


def suite_toml(eps: list[str], *attacks: dict, l2_eps: list[float] | None = None, standard_eps: str | None = None,
               standard_l2_eps: float | None = None, cascade: bool = False) -> str:
    """Suite file text: a Linf grid (fractions as strings), an L2 grid when given, one [[attacks]] table per dict;
    the standard budgets default to each grid's largest; cascade = true when asked."""
    lines = ['name = "t"', f"standard_eps = {json.dumps(standard_eps or eps[-1])}", f"eps = {json.dumps(eps)}",
             *(["cascade = true"] if cascade else [])]
    if l2_eps:
        lines += [f"l2_eps = {json.dumps(l2_eps)}", f"standard_l2_eps = {json.dumps(standard_l2_eps or l2_eps[-1])}"]
    for table in attacks:
        lines += ["[[attacks]]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def write_suite(folder: Path, text: str) -> Path:
    """Write suite text to folder/suite.toml and return the path."""
    path = folder / "suite.toml"
    path.write_text(text)
    return path


@cache
def pgd_trained_cnn(eps: float = 0.1, epochs: int = 3, seed: int = 0) -> nn.Module:
    """tiny_cnn adversarially trained on mnist5k (Madry et al.: each batch replaced by 5-step Linf PGD examples at
    eps, step eps/2, random start): a small robust model whose robust accuracy is far from 0 at eps."""

    def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(5):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(nn.functional.cross_entropy(model(adv), y), adv)
            adv = (x + (adv.detach() + eps / 2 * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        return adv.detach()

    return _fit(pgd, epochs, seed)
