"""Sweep one of our checkpoints on mnist5k digits; run by the distributed tests as one process or under torchrun.

Usage: python tests/dist_sweep.py CHECKPOINT SUITE OUT N [--resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

from robustjpeg.attacks import load_suite
from robustjpeg.data import eval_tensors, load_dataset
from robustjpeg.sweep import run_sweep
from robustjpeg.train import load_trained


def main(argv: list[str]) -> None:
    checkpoint, suite, out, n = argv[:4]
    model, _, _ = load_trained(checkpoint)
    x, y, indices = eval_tensors(load_dataset("mnist5k"), int(n), seed=0)
    run_sweep(model, x, y, load_suite(suite), Path(out), resume="--resume" in argv, batch_size=16, progress=False,
              model_info={"name": "smallcnn"}, indices=indices, dataset="mnist5k")


if __name__ == "__main__":
    main(sys.argv[1:])
