"""How much the naive way's own verdict depends on its seed: the official AutoAttack (standard) run directly with
several seeds at one budget on the same images, as benchmarks/cascade.py's naive way runs it with seed 0.

Prints, per seed, how many samples it breaks and which it leaves robust, then which samples some seeds break and
others leave robust: the pairs no engine with draws of its own can be sure to break as a given seed of the reference
does.

    OMP_NUM_THREADS=1 python benchmarks/reference_seeds.py [--model resnet20] [-n 200] [--norm Linf] [--eps 1/255]
        [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from cascade import MODELS, load, official_autoattack  # noqa: E402

from robustjpeg.attacks.budgets import parse_budget  # noqa: E402
from robustjpeg.evaluation.engine import PassCounter  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("-n", type=int, default=200, help="CIFAR-10 JPEG test images")
    p.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    p.add_argument("--eps", default="1/255", help="one budget; fractions allowed")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds of the official AutoAttack")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, x, y = load(args.model, args.n)
    eps, seeds = parse_budget(args.eps), [int(s) for s in args.seeds.split(",")]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    broken = {}
    for seed in seeds:
        start = time.perf_counter()
        broken[seed] = official_autoattack(PassCounter(model), x, y, args.norm, eps, seed=seed) & clean
        robust = (clean & ~broken[seed]).nonzero().flatten().tolist()
        print(f"seed {seed}: breaks {int(broken[seed].sum())} of {int(clean.sum())} clean-correct, "
              f"{time.perf_counter() - start:.1f} s; robust: {robust}", flush=True)
    stacked = torch.stack(list(broken.values()))
    split = (stacked.any(0) & ~stacked.all(0)).nonzero().flatten().tolist()
    print(f"{MODELS[args.model][0]}, {args.norm} {args.eps}: {len(split)} sample(s) broken by some seeds, not all")
    for i in split:
        print(f"  sample {i}: broken by seed(s) {[s for s in seeds if broken[s][i]]}")


if __name__ == "__main__":
    main()
