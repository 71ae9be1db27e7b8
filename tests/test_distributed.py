"""torchrun with 2 CPU processes (gloo): sharded sweeps (cascade, a minimum-norm attack first, random-start
PGD) equal one process sample by sample, DDP training keeps the ranks identical and leaves a loadable checkpoint,
a killed rank resumes without redoing its finished cells."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustjpeg.cli import EXIT_OK, main
from robustjpeg.errors import ConfigError
from robustjpeg.evaluation.results import read_run
from robustjpeg.models.checkpoints import load_trained
from robustjpeg.utils.distributed import Launch, padded_shard, read_launch, shard_indices

from conftest import REPO, one_thread
from sweep_models import suite_toml, write_suite

HELPER = str(REPO / "tests" / "dist_helper.py")
SUITE = suite_toml(["0", "2/255", "8/255", "32/255"], {"name": "fgsm", "kind": "fgsm"},
                   {"name": "pgd", "kind": "pgd", "steps": 5},  # random start, keyed per sample
                   {"name": "fmn", "kind": "fmn", "norm": "Linf", "steps": 20}, standard_eps="8/255", cascade=True)
N = 80
TRAIN_ARGS = ("--epochs", "2", "--train-subset", "800", "--device", "cpu")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def torchrun(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS` from the repository root."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=180)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A smallcnn trained on 800 mnist5k digits for two epochs by two DDP processes."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(HELPER, "train", *TRAIN_ARGS, "-o", str(out))
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"), SUITE)


def sweep_args(trained: Path, suite: Path, out: Path) -> list[str]:
    """`robustjpeg sweep` arguments: N mnist5k test digits, small batches so every shard has several."""
    return ["sweep", str(trained / "checkpoint.pt"), "--dataset", "mnist5k", "-n", str(N), "--suite", str(suite),
            "-o", str(out), "--device", "cpu", "--batch-size", "16"]


@pytest.fixture(scope="module")
def single(trained, suite, tmp_path_factory) -> Path:
    """The same sweep in this one process (one thread), the reference for the sharded ones."""
    out = tmp_path_factory.mktemp("single") / "run"
    with one_thread():
        assert main(sweep_args(trained, suite, out)) == EXIT_OK
    return out


def _assert_same_samples(a: Path, b: Path) -> None:
    ra, rb = read_run(a), read_run(b)
    for name in ra.samples:  # distances may differ in the last float bit: a rank's smaller batch rounds otherwise
        x, y = ra.samples[name], rb.samples[name]
        same = np.allclose(x, y, rtol=1e-6, atol=0) if name == "distances" else np.array_equal(x, y)
        assert same, f"samples.npz {name} differs between {a} and {b}"
    assert ra.samples.keys() == rb.samples.keys()
    assert ra.results["cells"] == rb.results["cells"] and ra.results["worst_case"] == rb.results["worst_case"]
    assert ra.results["checks"] == rb.results["checks"]


def test_launch_env_without_world_size_is_a_config_error():
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        read_launch({"RANK": "0"})


def test_launch_env_rank_beyond_world_is_a_config_error():
    with pytest.raises(ConfigError, match="RANK=2"):
        read_launch({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"})


def test_launch_env_without_master_address_is_a_config_error():
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        read_launch({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1"})


def test_plain_process_is_a_world_of_one():
    assert read_launch({}) == Launch(0, 1, 0) and not read_launch({}).active


def test_shards_cover_every_sample_once():
    parts = [shard_indices(103, r, 4) for r in range(4)]
    assert sorted(torch.cat(parts).tolist()) == list(range(103))


def test_training_shares_are_equal_and_cover_the_epoch():
    order = torch.randperm(11)
    parts = [padded_shard(order, r, 3) for r in range(3)]
    assert {len(p) for p in parts} == {4} and set(torch.cat(parts).tolist()) == set(range(11))


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights_and_a_loadable_checkpoint(trained):
    ranks = [torch.load(trained / f"rank-{r}.pt", weights_only=True) for r in range(2)]
    model, spec, ckpt = load_trained(trained / "checkpoint.pt")
    assert ckpt["complete"] and spec.arch == "smallcnn"
    for name, value in model.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the two ranks"
        assert torch.equal(value, ranks[0][name]), f"{name} in the checkpoint differs from rank 0's"
    history = ckpt["history"][-1]
    assert history["images"] == 800 and history["test_n"] == 1000  # each rank saw half; the records count all


@pytest.mark.slow
def test_killed_ddp_training_resumes_to_the_uninterrupted_weights(trained, tmp_path):
    out = tmp_path / "run"
    killed = torchrun(HELPER, "train", *TRAIN_ARGS, "-o", str(out), check=False, ROBUSTJPEG_TEST_DIE_TRAINING="0:1")
    assert killed.returncode != 0 and load_trained(out / "checkpoint.pt")[2]["epoch"] == 1
    torchrun(HELPER, "train", *TRAIN_ARGS, "-o", str(out), "--resume")
    resumed, whole = (load_trained(d / "checkpoint.pt")[0].state_dict() for d in (out, trained))
    for name, value in whole.items():
        assert torch.equal(resumed[name], value), f"{name} differs between the resumed and the uninterrupted run"


@pytest.mark.slow
def test_sharded_sweep_equals_single_process_sample_by_sample(trained, suite, single, tmp_path):
    out = tmp_path / "run"
    torchrun("-m", "robustjpeg", *sweep_args(trained, suite, out))
    assert sorted(p.name for p in (out / "shards" / "world-2").iterdir()) == ["rank-0", "rank-1"]
    assert read_run(out).run["processes"] == 2
    _assert_same_samples(single, out)


def _finished_cells(out: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").rglob("*.npz")}


@pytest.mark.slow
def test_killed_rank_resumes_without_redoing_finished_cells(trained, suite, single, tmp_path):
    out = tmp_path / "run"
    args = (HELPER, *sweep_args(trained, suite, out))
    killed = torchrun(*args, check=False, ROBUSTJPEG_TEST_DIE="1:3")
    assert killed.returncode != 0 and not (out / "results.json").exists()
    before = _finished_cells(out)
    assert len(list((out / "shards" / "world-2" / "rank-1" / "cells").glob("*.npz"))) == 3
    torchrun(*args, "--resume")
    after = _finished_cells(out)
    assert all(after[p] == stamp for p, stamp in before.items()), "a cell finished before the kill was written again"
    assert len(after) == 2 * (2 * 4 + 1) and len(before) < len(after)  # per rank: FGSM, PGD at 4 budgets; FMN once
    _assert_same_samples(single, out)
