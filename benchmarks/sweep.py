"""Sweep engine against a naive torchattacks loop: the same FGSM + PGD + PGD-L2 sweep over 8 budgets, same model and data.

Prints the ratio of per-sample forward+backward passes and of wall time (engine / naive; goal <= 0.35 for both)
and whether every sample the naive loop breaks is broken (the engine's early-exit PGD breaks a superset). The naive loop runs every attack at every budget on every
sample; its outcomes are combined as the engine's are.

    python benchmarks/sweep.py [-n 500] [--threads 1] [--reps 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from robustjpeg.attacks.suites import load_suite  # noqa: E402
from robustjpeg.evaluation.reference import reference_sweep  # noqa: E402
from robustjpeg.evaluation.results import cell_metas, read_run  # noqa: E402
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep  # noqa: E402

from sweep_models import eval_set, suite_toml, trained_cnn, write_suite  # noqa: E402  (the tiny MNIST CNN the tests use)

SUITE = suite_toml(["0", "1/255", "2/255", "4/255", "8/255", "16/255", "32/255", "64/255"],
                   {"name": "fgsm", "kind": "fgsm"}, {"name": "pgd", "kind": "pgd", "steps": 10, "random_start": False},
                   {"name": "pgd-l2", "kind": "pgd", "norm": "L2", "steps": 10, "random_start": False},
                   l2_eps=[0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="held-out MNIST digits to attack")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both runs")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions; the best wall time of each counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, (x, y) = trained_cnn(), eval_set(args.n)
    walls: dict[str, list[float]] = {"engine": [], "attacks": [], "naive": []}
    with tempfile.TemporaryDirectory() as tmp:
        suite = load_suite(write_suite(Path(tmp), SUITE))
        for rep in range(args.reps):
            t0 = time.perf_counter()
            run_sweep(model, x, y, suite, Path(tmp) / f"run{rep}", SweepConfig(batch_size=args.batch_size, progress=False))
            walls["engine"].append(time.perf_counter() - t0)
            run = read_run(Path(tmp) / f"run{rep}")
            walls["attacks"].append(walls["engine"][-1] - run.run["wall_time_checks_s"])
            t0 = time.perf_counter()
            naive, naive_passes = reference_sweep(model, x, y, suite, batch_size=args.batch_size)
            walls["naive"].append(time.perf_counter() - t0)
        identical = all(not (run.cell(k) & ~v).any() for k, v in naive.items())
        best = {k: min(v) for k, v in walls.items()}
        report(args, run, naive_passes, best["engine"], best["attacks"], best["naive"], identical)


def total(passes: dict) -> int:
    return passes["forward"] + passes["backward"]


def report(args, run, naive_by_attack: dict, engine_wall: float, attack_wall: float, naive_wall: float, identical: bool) -> None:
    naive = {k: sum(p[k] for p in naive_by_attack.values()) for k in ("forward", "backward")}
    print(f"sweep engine vs naive torchattacks loop; tiny CNN, {args.n} MNIST digits, FGSM+PGD-10+CW-50, "
          f"8 Linf + 8 L2 budgets, {args.threads} thread(s), best of {args.reps}")
    print(f"naive loop: {total(naive)} passes ({naive['forward']} fwd + {naive['backward']} bwd), {naive_wall:.1f} s")
    for label, passes, wall in (("engine, attacks only", run.run["passes_attacks"], attack_wall),
                                ("engine incl. 16 checks", run.run["passes"], engine_wall)):
        print(f"{label}: {total(passes)} passes ({passes['forward']} fwd + {passes['backward']} bwd), {wall:.1f} s; "
              f"pass ratio {total(passes) / total(naive):.3f}, wall-time ratio {wall / naive_wall:.3f}")
    for name in (k for k in naive_by_attack if k != "clean"):
        spent = {k: sum(m["passes"][k] for m in cell_metas(run.folder) if m["attack"] == name) for k in naive}
        print(f"  {name}: engine {total(spent)} vs naive {total(naive_by_attack[name])} passes, "
              f"ratio {total(spent) / total(naive_by_attack[name]):.3f}")
    print(f"every sample the naive loop breaks is broken: {identical}")



if __name__ == "__main__":
    main()
