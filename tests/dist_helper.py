"""Entry point the distributed tests launch, as one process or under torchrun.

  python tests/dist_helper.py train ARGS...            robustjpeg train ARGS; each rank also saves its final
                                                        weights to OUT/rank-K.pt (K = its rank)
  python tests/dist_helper.py sweep CKPT SUITE OUT N [--resume] [--device=D] [--batch-size=B]
                                                        sweep one of our checkpoints on N mnist5k test digits
ROBUSTJPEG_TEST_DIE=R:K makes rank R exit abruptly right after saving its K-th cell file (a killed rank);
ROBUSTJPEG_TEST_DIE_TRAINING=R:K the same after its K-th training checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from robustjpeg import results
from robustjpeg import train as train_stage
from robustjpeg.attacks import load_suite
from robustjpeg.cli import main as cli_main
from robustjpeg.data import eval_tensors, load_dataset
from robustjpeg.distributed import read_launch
from robustjpeg.sweep import run_sweep


def _keep_rank_weights() -> None:
    finish = train_stage._finish

    def wrapped(out, model, *args, **kw):
        torch.save(model.state_dict(), Path(out) / f"rank-{read_launch().rank}.pt")
        return finish(out, model, *args, **kw)

    train_stage._finish = wrapped


def _die_after(owner, name: str, spec: str) -> None:
    """Make rank R exit abruptly right after its K-th call of owner.name (spec "R:K"): a killed rank."""
    rank, count = map(int, spec.split(":"))
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kw):
        result = original(*args, **kw)
        calls.append(name)
        if read_launch().rank == rank and len(calls) == count:
            os._exit(9)
        return result

    setattr(owner, name, wrapped)


def sweep(checkpoint: str, suite: str, out: str, n: str, *flags: str) -> None:
    opts = dict(flag[2:].split("=") for flag in flags if "=" in flag)
    model, _, _ = train_stage.load_trained(checkpoint)
    x, y, indices = eval_tensors(load_dataset("mnist5k"), int(n), seed=0)
    run_sweep(model, x, y, load_suite(suite), Path(out), resume="--resume" in flags, device=opts.get("device", "cpu"),
              batch_size=int(opts.get("batch-size", 16)), progress=False, model_info={"name": "smallcnn"},
              indices=indices, dataset="mnist5k")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if "ROBUSTJPEG_TEST_DIE" in os.environ:
        _die_after(results.CellStore, "save", os.environ["ROBUSTJPEG_TEST_DIE"])
    if "ROBUSTJPEG_TEST_DIE_TRAINING" in os.environ:
        _die_after(train_stage, "save_checkpoint", os.environ["ROBUSTJPEG_TEST_DIE_TRAINING"])
    if command == "train":
        _keep_rank_weights()
        raise SystemExit(cli_main(["train", *rest]))
    sweep(*rest)
