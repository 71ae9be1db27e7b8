"""What the paper's initialisation gives on CIFAR-10 JPEG: sensitivity tables of a trained ResNet-20 against quality 50.

Run from the repository root (needs the shared data folder):

    OMP_NUM_THREADS=1 python benchmarks/sensitivity_tables.py [--images 10000] [--q-max 10] [--alpha 5]

The trained baseline is the third-party CIFAR-10 ResNet-20 of the shared folder (trained on lossless CIFAR-10, so
it stands in for a baseline of our own). Tables: the sensitivity init as `robustjpeg train --jpeg-init sensitivity`
computes it (eval mode, un-augmented images), the same with the model in training mode on augmented batches of 64
(what the official code does: its estimate never calls eval()), and the standard quality-50 tables. For each it
prints the luma and chroma steps' range, how many are soft (alpha q^2 < 20) or hard (alpha q^2 >= 500), the share
of coefficients the 8-bit indices clip, the PSNR of the soft layer's output against its input on 1,000 test
images, and the standard quality closest to the tables.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from robustjpeg.data.datasets import augment, eval_tensors, load_dataset, stratified_indices
from robustjpeg.models.codec import matched_quality, standard_tables
from robustjpeg.models.jpeg import JpegLayer, init_sensitivity
from robustjpeg.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTJPEG_SHARED", ROOT.parent / "shared"))
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def train_mode_tables(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, q_max: float) -> torch.Tensor:
    """Sensitivity steps with batch-norm in training mode on crop-and-flip batches of 64, scaled to q_max."""
    layer, gen = JpegLayer(), torch.Generator().manual_seed(0)
    model.train()
    total = torch.zeros(2, 8, 8)
    for xb, yb in zip(x.split(64), y.split(64)):
        xb = augment((xb * 255).round().to(torch.uint8), "cifar", gen).float() / 255
        z = layer.encode(xb).requires_grad_(True)
        loss = F.cross_entropy(model(layer.decode(z, 32, 32)), yb, reduction="sum")
        (grad,) = torch.autograd.grad(loss, z)
        g2 = grad.square().mean(dim=(0, 1))  # [C, 64]
        total += torch.stack([g2[0], g2[1:].mean(0)]).view(2, 8, 8) * len(xb)
    model.eval()
    steps = 1 / total
    return steps * (q_max / steps[0].max())


def describe(name: str, steps: torch.Tensor, alpha: float, x: torch.Tensor) -> str:
    """One Markdown row: step ranges, soft and hard counts, clipped share, PSNR of the soft layer, matched quality."""
    layer = JpegLayer(alpha=alpha, trainable=False)
    layer.tables.data.copy_(steps)
    hardness = alpha * layer.steps() ** 2
    with torch.no_grad():
        z = layer.encode(x)
        clipped = float((z / layer.channel_steps(z.dtype)).abs().gt(127.5).float().mean())
        out = layer(x).clamp(0, 1)
    psnr = float(10 * torch.log10(1 / (out - x).square().mean()))
    soft = [int((h < 20).sum()) for h in hardness]
    hard = [int((h >= 500).sum()) for h in hardness]
    rng = [f"{float(t.min()):.2f}..{float(t.max()):.2f}" for t in layer.steps()]
    return (f"| {name} | {rng[0]} | {rng[1]} | {soft[0]} / {soft[1]} | {hard[0]} / {hard[1]} | "
            f"{100 * clipped:.2f}% | {psnr:.1f} dB | {matched_quality(layer.steps())} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000, help="training images for the sensitivity estimate")
    p.add_argument("--q-max", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=5.0)
    args = p.parse_args()
    ds = load_dataset(f"imagefolder:{SHARED / 'data' / 'cifar10-jpeg'}")
    model, _ = load_model(SHARED / "models" / "cifar10" / "resnet20-12fca82f.th", arch="resnet20", **IMAGENET)
    idx = stratified_indices(ds.train.y, args.images, 0)
    x, y = ds.train.x[idx].float() / 255, ds.train.y[idx]
    test_x, _, _ = eval_tensors(ds, 1000, 0)
    ours = JpegLayer()
    init_sensitivity(ours, model, x, y, q_max=args.q_max)
    tables = {f"sensitivity, eval mode (ours), q_max {args.q_max:g}": ours.steps().detach(),
              f"sensitivity, training mode (official), q_max {args.q_max:g}": train_mode_tables(model, x, y, args.q_max),
              "standard, quality 50": standard_tables(50)}
    print(f"alpha = {args.alpha:g}; sensitivity on {len(x)} CIFAR-10 JPEG training images; PSNR on 1,000 test images\n")
    print("| tables | luma steps | chroma steps | soft (alpha q^2 < 20) luma / chroma | hard (>= 500) luma / chroma "
          "| coefficients clipped (8-bit) | PSNR, soft layer | closest quality |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, steps in tables.items():
        print(describe(name, steps, args.alpha, test_x))
    a, b = (t.log() for t in list(tables.values())[:2])
    print(f"\nlargest |log ratio| between the eval-mode and training-mode sensitivity steps: {float((a - b).abs().max()):.3f}")


if __name__ == "__main__":
    main()
