"""Sweep wall time with 1 and 2 processes (torchrun, gloo) on the CPU, and on 1 GPU when there is one.

Trains a smallcnn on mnist5k (one epoch, one process), then runs the same FGSM + 10-step PGD sweep over 8 Linf
budgets on n test digits as: one process with one thread (the baseline), one process with two threads, two
processes with one thread each (torchrun), and one process on CUDA when available. Prints each run's sweep wall
time (run.json, start-up excluded), the command's wall time, and the speed-up against the baseline; checks that
every run's per-sample outcomes equal the baseline's.

    python benchmarks/scaling.py [-n 500] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sweep_models import suite_toml, write_suite  # noqa: E402

SUITE = suite_toml(["0", "1/255", "2/255", "4/255", "8/255", "16/255", "32/255", "64/255"],
                   {"name": "fgsm", "kind": "fgsm"}, {"name": "pgd", "kind": "pgd", "steps": 10, "random_start": False},
                   standard_eps="8/255")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 4):  # 4: the sweep finished and some check failed
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="mnist5k test digits to attack")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run([sys.executable, "-m", "robustjpeg", "train", "-o", str(tmp / "model"), "--epochs", "1",
              "--device", "cpu"], 2)
        suite = str(write_suite(tmp, SUITE))
        sweep = ["-m", "robustjpeg", "sweep", str(tmp / "model" / "checkpoint.pt"), "--suite", suite, "--dataset",
                 "mnist5k", "-n", str(args.n), "--batch-size", str(args.batch_size), "-o"]
        cpu = ["--device", "cpu"]
        runs = [("1 process, 1 thread (baseline)", [sys.executable, *sweep, str(tmp / "p1t1"), *cpu], 1, "p1t1"),
                ("1 process, 2 threads", [sys.executable, *sweep, str(tmp / "p1t2"), *cpu], 2, "p1t2"),
                ("2 processes, 1 thread each", [*TORCHRUN, "2", *sweep, str(tmp / "p2t1"), *cpu], 1, "p2t1")]
        if torch.cuda.is_available():
            runs.append(("1 process, 1 GPU", [sys.executable, *sweep, str(tmp / "gpu"), "--device", "cuda"], 1, "gpu"))
        base = None
        print(f"sweep of {args.n} digits, FGSM + PGD-10 over 8 budgets; {os.cpu_count()} CPU cores visible")
        for label, cmd, threads, name in runs:
            command = _run(cmd, threads)
            run = json.loads((tmp / name / "run.json").read_text())
            samples = np.load(tmp / name / "samples.npz")["robust"]
            base = base or (run["wall_time_s"], command, samples)
            same = np.array_equal(samples, base[2])
            print(f"{label:32s} sweep {run['wall_time_s']:7.2f} s (x{base[0] / run['wall_time_s']:.2f})  "
                  f"command {command:7.2f} s (x{base[1] / command:.2f})  outcomes equal baseline: {same}")


if __name__ == "__main__":
    main()
