"""Benchmark: JPEG layer forward+backward vs kornia's differentiable JPEG and vs a CIFAR ResNet-20 training step.

Run from the repository root: `python benchmarks/jpeg_layer.py [--reps 5] [--batch-224 32]`.
Timings are interleaved (one rep of each contender in turn) and the best (minimum) wall time of the reps is
reported: on a shared machine the minimum is the figure least inflated by other processes. Goals: layer <= 5% of a ResNet-20 step at 32x32, layer < kornia.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustjpeg.models.factory import create_model
from robustjpeg.models.jpeg import JpegLayer


def layer_step(x: torch.Tensor) -> Callable[[], None]:
    layer = JpegLayer(quality=50)
    x = x.clone().requires_grad_(True)
    return lambda: layer(x).sum().backward()


def kornia_step(x: torch.Tensor) -> Callable[[], None]:
    from kornia.enhance import jpeg_codec_differentiable

    x = x.clone().requires_grad_(True)
    quality = torch.tensor([50.0])
    return lambda: jpeg_codec_differentiable(x, quality).sum().backward()


def train_step(x: torch.Tensor, model: nn.Module) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    y = torch.randint(0, 10, (x.shape[0],))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def interleaved_best(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Best wall time (s) of each step, after one warm-up, running the steps in turn every rep."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions at 32x32")
    parser.add_argument("--reps-224", type=int, default=3, help="timed repetitions at 224x224")
    parser.add_argument("--batch-224", type=int, default=32, help="batch at 224x224 (256 takes minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("resnet20")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; layer: soft mode, q=50 tables; "
          f"kornia: jpeg_codec_differentiable(quality=50); backbone: the package's resnet20")

    x32 = torch.rand(256, 3, 32, 32)
    t32 = interleaved_best(
        {"layer": layer_step(x32), "kornia": kornia_step(x32), "resnet20": train_step(x32, model)}, args.reps
    )
    print(f"32x32, batch 256, best of {args.reps}: layer fwd+bwd {t32['layer'] * 1e3:.1f} ms, "
          f"kornia fwd+bwd {t32['kornia'] * 1e3:.1f} ms, ResNet-20 training step {t32['resnet20'] * 1e3:.1f} ms")
    print(f"  layer / ResNet-20 step = {t32['layer'] / t32['resnet20']:.3f} (goal <= 0.05)")
    print(f"  layer / kornia         = {t32['layer'] / t32['kornia']:.3f} (goal < 1)")

    x224 = torch.rand(args.batch_224, 3, 224, 224)
    t224 = interleaved_best({"layer": layer_step(x224), "kornia": kornia_step(x224)}, args.reps_224)
    note = "" if args.batch_224 == 256 else " (not 256: minutes per rep on a few CPU cores)"
    print(f"224x224, batch {args.batch_224}{note}, best of {args.reps_224}: "
          f"layer {t224['layer'] * 1e3:.1f} ms ({t224['layer'] / args.batch_224 * 1e3:.2f} ms/image), "
          f"kornia {t224['kornia'] * 1e3:.1f} ms ({t224['kornia'] / args.batch_224 * 1e3:.2f} ms/image)")
    print(f"  layer / kornia         = {t224['layer'] / t224['kornia']:.3f} (goal < 1)")


if __name__ == "__main__":
    main()
