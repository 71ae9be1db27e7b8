"""Benchmark: wall time of training steps of one recipe, and the epoch time it implies (for sizing long runs).

Run from the repository root, e.g.

    OMP_NUM_THREADS=1 python benchmarks/train_steps.py --dataset imagefolder:../shared/data/cifar10-jpeg \
        --arch resnet20 --batch-size 64 --steps 300 [--variant jpeg]
    OMP_NUM_THREADS=1 python benchmarks/train_steps.py --synthetic 112 --classes 102 --train-images 1020 \
        --test-images 6149 --arch torchvision:resnet18 --batch-size 64 --steps 60

Times `--steps` steps (forward, backward, SGD, plus Adam on the JPEG tables for --variant jpeg) through the training
harness's own batches, augmentation and optimisers, after `--warmup` untimed steps, then the forward pass over
`--eval-batches` test batches. Prints ms per step, images/s, and one epoch projected from them: training steps for
the whole training split plus the per-epoch test pass. `--synthetic SIZE` times random uint8 images of that size
instead of a data set (no decoding or resizing cost: a lower bound for file-based data).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time

import torch
import torch.nn.functional as F

from robustjpeg.data.datasets import Dataset, TensorSplit, load_dataset
from robustjpeg.models.factory import build_model
from robustjpeg.training.batches import Batches
from robustjpeg.training.config import TrainConfig
from robustjpeg.training.loop import evaluate
from robustjpeg.training.setup import make_optimisers, make_spec


def synthetic(size: int, classes: int, train: int, test: int) -> Dataset:
    """Random RGB images of one size in the fine-grained family (no augmentation on tensors)."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorSplit:
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
        return TensorSplit(x, torch.arange(n) % classes)

    return Dataset(f"synthetic{size}", [str(c) for c in range(classes)], (0.485, 0.456, 0.406),
                   (0.229, 0.224, 0.225), "fine", split(train), split(test))


def time_steps(cfg: TrainConfig, ds: Dataset, steps: int, warmup: int) -> float:
    """Seconds per training step, timed over `steps` after `warmup` untimed ones."""
    torch.manual_seed(cfg.seed)
    model = build_model(make_spec(cfg, ds)).train()
    opts = make_optimisers(model, cfg)
    batches = Batches(ds, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = itertools.chain.from_iterable(batches.epoch(gen) for _ in itertools.count())
    start = 0.0
    for i, (x, y) in enumerate(itertools.islice(stream, warmup + steps)):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
    return (time.perf_counter() - start) / steps


def time_eval(cfg: TrainConfig, ds: Dataset, batches: int, batch_size: int = 500) -> float:
    """Seconds for the per-epoch test pass over the whole test split, projected from `batches` batches."""
    model = build_model(make_spec(cfg, ds))
    part = ds.test.subset(torch.arange(min(len(ds.test), batches * batch_size)))
    start = time.perf_counter()
    evaluate(model, part, torch.device("cpu"), batch_size=batch_size)
    return (time.perf_counter() - start) * len(ds.test) / len(part)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="imagefolder:../shared/data/cifar10-jpeg")
    p.add_argument("--synthetic", type=int, default=None, metavar="SIZE", help="random images of SIZE px instead")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--variant", default="baseline", choices=["baseline", "jpeg", "jpeg-fixed"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=4)
    args = p.parse_args()
    ds = (synthetic(args.synthetic, args.classes, args.train_images, args.test_images) if args.synthetic
          else load_dataset(args.dataset))
    cfg = TrainConfig(dataset=ds.name, arch=args.arch, variant=args.variant, batch_size=args.batch_size,
                      device="cpu").resolved(ds.family)
    step = time_steps(cfg, ds, args.steps, args.warmup)
    test = time_eval(cfg, ds, args.eval_batches)
    per_epoch = math.ceil(len(ds.train) / cfg.batch_size)
    epoch = per_epoch * step + test
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{ds.name} {cfg.arch} {cfg.variant} batch {cfg.batch_size}, {torch.get_num_threads()} thread(s), "
          f"load average {load}: {1000 * step:.1f} ms/step ({cfg.batch_size / step:.0f} img/s) over {args.steps} "
          f"steps; test pass {test:.1f} s; one epoch ({per_epoch} steps + test) {epoch / 60:.1f} min")


if __name__ == "__main__":
    main()
