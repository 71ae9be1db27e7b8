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

from robustjpeg.models.jpeg import JpegLayer


class _Block(nn.Module):
    """Basic residual block with the option-A shortcut (stride-2 subsample, zero-padded channels)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x if self.pad == 0 else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


def _local_resnet20() -> nn.Module:
    """Minimal CIFAR ResNet-20 (He et al. 2016, option A), used when robustjpeg.models.factory is not available."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(_Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def resnet20() -> tuple[nn.Module, str]:
    """The project's ResNet-20 when its models module exists, else the local minimal one."""
    try:
        from robustjpeg.models.factory import create_model
    except ImportError:
        return _local_resnet20(), "local minimal ResNet-20"
    return create_model("resnet20"), "robustjpeg.models.factory resnet20"


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
    model, model_name = resnet20()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; layer: soft mode, q=50 tables; "
          f"kornia: jpeg_codec_differentiable(quality=50); backbone: {model_name}")

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
