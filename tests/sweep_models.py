"""Small real models for the sweep tests: a tiny CNN trained for a few seconds on the mnist5k training digits."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from robustjpeg.data import eval_tensors, load_dataset


def tiny_cnn() -> nn.Module:
    """Two strided convolutions and a linear head; no batch norm, so each sample's result ignores its batch."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@lru_cache(maxsize=None)
def trained_cnn(epochs: int = 2, seed: int = 0) -> nn.Module:
    """tiny_cnn trained on the 4,000 mnist5k training digits (about 90% on its test digits), in eval mode."""
    torch.manual_seed(seed)
    train = load_dataset("mnist5k").train
    xt, yt = train.x.float() / 255, train.y
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(yt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


def eval_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n class-stratified mnist5k test digits (float in [0, 1]) and their labels, as the sweep command picks them."""
    x, y, _ = eval_tensors(load_dataset("mnist5k"), n, seed=0)
    return x, y


def suite_toml(eps: list[str], *attacks: dict, l2_eps: list[float] | None = None, standard_eps: str | None = None,
               standard_l2_eps: float | None = None) -> str:
    """Suite file text: a Linf grid (fractions as strings), an L2 grid when given, one [[attacks]] table per dict;
    the standard budgets default to each grid's largest."""
    lines = ['name = "t"', f"standard_eps = {json.dumps(standard_eps or eps[-1])}", f"eps = {json.dumps(eps)}"]
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
