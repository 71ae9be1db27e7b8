"""The standard suite with cascade, without it, and the naive way (official AutoAttack + a torchattacks loop), side
by side on the tests' small MNIST CNNs (undefended and PGD-trained), at the MNIST budgets the CLI gives the suite.

Runs interleaved, the median wall time of the repeats counts. Prints each way's per-sample passes (forward +
backward, attacks only) and wall time, and whether the cascaded worst case is never weaker than the others: every
sample the naive way or the full per-attack sweep breaks at a budget, the cascaded sweep breaks too. The naive way
runs every FGSM and PGD configuration (one restart) through torchattacks and the official AutoAttack at every
budget of both norms on every sample; Square, APGD and the minimum-norm attacks are left out of it, so its passes
are a lower bound.

    python benchmarks/cascade.py [-n 40] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from robustjpeg.attacks.adapters import load_suite  # noqa: E402
from robustjpeg.attacks.budgets import fit_suite  # noqa: E402
from robustjpeg.evaluation.results import read_run  # noqa: E402
from robustjpeg.evaluation.sweep import PassCounter, reference_sweep, run_sweep  # noqa: E402

from sweep_models import eval_set, pgd_trained_cnn, trained_cnn  # noqa: E402  (the tests' tiny MNIST CNNs)

MODELS = {"tiny CNN (undefended)": trained_cnn, "tiny CNN (PGD-trained)": pgd_trained_cnn}


def naive_autoattack(model, x, y, suite, norm: str, tally: dict) -> dict[float, np.ndarray]:
    """Official AutoAttack (standard) at every budget of one norm on every sample: broken per budget."""
    from pyautoattack import AutoAttack

    counted, broken = PassCounter(model, tally), {}
    for eps in (e for e in suite.grid(norm) if e > 0):
        attack = AutoAttack(counted, eps=eps, norm=norm, version="standard", seed=0, device=x.device)
        attack.verbose = False
        adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
        with torch.no_grad():
            broken[eps] = (counted(adv).argmax(1) != y).cpu().numpy()
    return broken


def naive_way(model, x, y, suite) -> tuple[dict[tuple[str, float], np.ndarray], dict]:
    """Per (norm, budget) the samples the naive way breaks (clean-wrong included), and its passes."""
    loop = dataclasses.replace(suite, attacks=[a for a in suite.attacks if a.kind in ("fgsm", "pgd")])
    cells, passes = reference_sweep(model, x, y, loop)
    broken = {}
    for key, robust in cells.items():
        _, norm, eps = key.split("|")
        broken[(norm, float(eps))] = broken.get((norm, float(eps)), False) | ~robust
    for norm in ("Linf", "L2"):
        passes[f"autoattack-{norm}"] = tally = {"forward": 0, "backward": 0}
        for eps, hit in naive_autoattack(model, x, y, suite, norm, tally).items():
            key = min(broken, key=lambda k: (k[0] != norm, abs(k[1] - eps)))
            broken[key] = broken[key] | hit
    return broken, {k: sum(p[k] for p in passes.values()) for k in ("forward", "backward")}


def sweep_way(model, x, y, suite, folder: Path) -> tuple[dict[tuple[str, float], np.ndarray], dict]:
    run_sweep(model, x, y, suite, folder, progress=False)
    run = read_run(folder)
    worst = {(k.split("|")[0], float(k.split("|")[1])): ~w for k, w in zip(run.samples["worst_keys"], run.samples["worst"])}
    return worst, run.run["passes_attacks"]


def weaker(cascade: dict, other: dict) -> int:
    """Samples `other` breaks at some budget that the cascaded sweep leaves robust there."""
    return sum(int((other[k] & ~cascade[k]).sum()) for k in other if k in cascade)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="MNIST test digits to attack")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions; the median wall time counts")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = eval_set(args.n)
    cascaded = fit_suite(load_suite("standard"), "standard", "mnist")
    ways = {"cascade": cascaded, "full": dataclasses.replace(cascaded, cascade=False), "naive": cascaded}
    print(f"standard suite, {args.n} MNIST digits, Linf {cascaded.eps}, L2 {cascaded.l2_eps}, {args.threads} thread(s), "
          f"median of {args.reps}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in MODELS.items():
            model, walls, found = build(), {w: [] for w in ways}, {}
            for rep in range(args.reps):
                for way, suite in ways.items():
                    t0 = time.perf_counter()
                    found[way] = (naive_way(model, x, y, suite) if way == "naive"
                                  else sweep_way(model, x, y, suite, Path(tmp) / f"{label[:12]}-{way}-{rep}".replace(" ", "")))
                    walls[way].append(time.perf_counter() - t0)
            naive_passes = sum(found["naive"][1].values())
            for way in ways:
                passes, wall = sum(found[way][1].values()), statistics.median(walls[way])
                print(f"{label} | {way}: {passes} passes ({passes / naive_passes:.3f} of naive), {wall:.1f} s")
            print(f"{label} | cascade weaker than full on {weaker(found['cascade'][0], found['full'][0])} "
                  f"(sample, budget) pairs, than naive on {weaker(found['cascade'][0], found['naive'][0])}")


if __name__ == "__main__":
    main()
