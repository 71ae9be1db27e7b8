"""`robustjpeg ARGS` with test hooks, for the distributed tests to launch under torchrun.

  python tests/dist_helper.py train ARGS...   as robustjpeg train; each rank also saves its final weights to
                                              OUT/rank-K.pt (K = its rank)
  python tests/dist_helper.py sweep ARGS...   as robustjpeg sweep
ROBUSTJPEG_TEST_DIE=R:K makes rank R exit abruptly right after saving its K-th cell file (a killed rank);
ROBUSTJPEG_TEST_DIE_TRAINING=R:K the same after its K-th training checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from robustjpeg.cli import main
from robustjpeg.evaluation import results
from robustjpeg.training import loop as train_stage
from robustjpeg.utils.distributed import read_launch


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


if __name__ == "__main__":
    if "ROBUSTJPEG_TEST_DIE" in os.environ:
        _die_after(results.CellStore, "save", os.environ["ROBUSTJPEG_TEST_DIE"])
    if "ROBUSTJPEG_TEST_DIE_TRAINING" in os.environ:
        _die_after(train_stage, "save_checkpoint", os.environ["ROBUSTJPEG_TEST_DIE_TRAINING"])
    if sys.argv[1] == "train":
        _keep_rank_weights()
    raise SystemExit(main(sys.argv[1:]))
