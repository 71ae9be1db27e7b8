"""Training harness: accuracy on real digits, JPEG tables that learn, safe checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustjpeg import cli
from robustjpeg.data.datasets import load_dataset
from robustjpeg.errors import CheckpointError, ConfigError, RunFolderError
from robustjpeg.models.checkpoints import load_trained
from robustjpeg.models.codec import standard_tables
from robustjpeg.models.factory import build_model
from robustjpeg.training import setup as training_setup
from robustjpeg.training.config import TrainConfig
from robustjpeg.training.loop import evaluate, train
from robustjpeg.training.setup import backbone_lr, init_tables, make_optimisers, make_spec

REPO = Path(__file__).resolve().parents[1]


def test_baseline_smallcnn_reaches_95_percent_on_mnist5k(mnist_baseline_run):
    test = mnist_baseline_run["test"]
    assert test["n"] == 1000
    assert test["accuracy"] >= 0.95, f"baseline reached only {test['accuracy']:.3f} on mnist5k"
    assert test["ci95"][0] <= test["accuracy"] <= test["ci95"][1]


def test_jpeg_dl_reaches_95_percent_and_its_tables_move(mnist_jpeg_run):
    assert mnist_jpeg_run["test"]["accuracy"] >= 0.95, f"JPEG-DL reached only {mnist_jpeg_run['test']['accuracy']:.3f}"
    model, spec, _ = load_trained(mnist_jpeg_run["checkpoint"])
    start = standard_tables(spec.jpeg["quality"])[:1]
    moved = (model.jpeg.steps().detach() - start).abs()
    assert int((moved > 0.01).sum()) > 32, f"fewer than half the luma steps moved by 0.01: {moved.flatten().tolist()}"


def test_checkpoint_loads_weights_only_and_reproduces_the_reported_accuracy(mnist_baseline_run):
    path = Path(mnist_baseline_run["checkpoint"])
    raw = torch.load(path, weights_only=True)
    assert raw["complete"] and raw["epoch"] == raw["train_config"]["epochs"]
    model, spec, _ = load_trained(path)
    assert spec.variant == "baseline" and not model.training
    correct, n = evaluate(model, load_dataset("mnist5k").test, torch.device("cpu"))
    assert correct == mnist_baseline_run["test"]["correct"] and n == mnist_baseline_run["test"]["n"]


def test_load_trained_refuses_foreign_and_damaged_files(mnist_baseline_run, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="robustjpeg eval"):
        load_trained(foreign)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(Path(mnist_baseline_run["checkpoint"]).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="weights-only"):
        load_trained(damaged)


def test_metrics_log_has_one_json_line_per_epoch(mnist_baseline_run):
    lines = (Path(mnist_baseline_run["checkpoint"]).parent / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == list(range(1, mnist_baseline_run["epochs"] + 1))
    assert all(r["images_per_s"] > 0 and 0 <= r["test_acc"] <= 1 for r in records)


def test_jpeg_tables_get_their_own_adam_without_weight_decay():
    ds = load_dataset("mnist5k")
    cfg = TrainConfig(variant="jpeg", device="cpu").resolved(ds.family)
    model = build_model(make_spec(cfg, ds))
    sgd, adam = make_optimisers(model, cfg)
    jpeg_ids = {id(p) for p in model.jpeg.parameters()}
    assert jpeg_ids and isinstance(adam, torch.optim.Adam)
    assert {id(p) for g in adam.param_groups for p in g["params"]} == jpeg_ids
    assert adam.defaults["lr"] == 3e-3 and adam.defaults["weight_decay"] == 0.0
    assert not jpeg_ids & {id(p) for g in sgd.param_groups for p in g["params"]}


def test_jpeg_fixed_tables_stay_at_the_standard_quality():
    ds = load_dataset("mnist5k")
    cfg = TrainConfig(variant="jpeg-fixed", jpeg_quality=75, device="cpu").resolved(ds.family)
    model = build_model(make_spec(cfg, ds))
    assert make_optimisers(model, cfg)[1:] == [], "a frozen JPEG layer must not get an optimiser"
    torch.testing.assert_close(model.jpeg.steps(), standard_tables(75)[:1])


@pytest.mark.parametrize("init", ["abs_avg", "sensitivity"])
def test_data_driven_table_inits_replace_the_standard_start(init, mnist_baseline_run):
    ds = load_dataset("mnist5k")
    init_from = mnist_baseline_run["checkpoint"] if init == "sensitivity" else None
    cfg = TrainConfig(variant="jpeg", jpeg_init=init, init_from=init_from, device="cpu").resolved(ds.family)
    spec = make_spec(cfg, ds)
    model = build_model(spec)
    init_tables(model, cfg, ds, torch.device("cpu"))
    steps = model.jpeg.steps().detach()
    assert spec.jpeg["init"] == init and torch.isfinite(steps).all()
    assert not torch.allclose(steps, standard_tables(cfg.jpeg_quality)[:1]), f"{init} left the standard tables"
    if init == "sensitivity":
        assert float(steps.max()) == pytest.approx(10.0), "sensitivity steps should top out at q_max = 10"


def test_sensitivity_is_estimated_on_all_training_images_up_to_ten_thousand(mnist_baseline_run, monkeypatch):
    seen = []
    monkeypatch.setattr(training_setup, "init_sensitivity",
                        lambda layer, model, x, y, q_max: seen.append((len(x), torch.bincount(y).tolist(), q_max)))
    ds = load_dataset("mnist5k")
    for subset, cap in ((None, 10_000), (1500, 10_000), (None, 1000)):
        monkeypatch.setattr(training_setup, "SENSITIVITY_IMAGES", cap)
        cfg = TrainConfig(variant="jpeg-fixed", jpeg_init="sensitivity", init_from=mnist_baseline_run["checkpoint"],
                          q_max=5, train_subset=subset, device="cpu").resolved(ds.family)
        init_tables(build_model(make_spec(cfg, ds)), cfg, ds, torch.device("cpu"))
    sizes = [n for n, _, _ in seen]
    assert sizes == [len(ds.train), 1500, 1000], f"sensitivity images per run: {sizes}"
    assert all(q_max == 5 for _, _, q_max in seen)
    assert max(seen[2][1]) - min(seen[2][1]) <= 1, "a capped sample should keep the classes balanced"


def test_sensitivity_init_refuses_a_jpeg_checkpoint(mnist_jpeg_run):
    ds = load_dataset("mnist5k")
    cfg = TrainConfig(variant="jpeg", jpeg_init="sensitivity", init_from=mnist_jpeg_run["checkpoint"],
                      device="cpu").resolved(ds.family)
    with pytest.raises(ConfigError, match="needs a baseline"):
        init_tables(build_model(make_spec(cfg, ds)), cfg, ds, torch.device("cpu"))


def test_train_config_round_trips_through_json_with_paths_as_strings(tmp_path):
    cfg = TrainConfig(data_root=tmp_path, milestones=(2, 3), variant="jpeg", jpeg_hardness=0.7)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["data_root"] == str(tmp_path)
    assert TrainConfig.from_dict(d) == TrainConfig(data_root=str(tmp_path), milestones=(2, 3), variant="jpeg",
                                                   jpeg_hardness=0.7)


def test_backbone_learning_rate_drops_tenfold_at_each_milestone():
    cfg = TrainConfig(lr=0.1, epochs=10, milestones=(3, 6)).resolved("cifar")
    assert [round(backbone_lr(cfg, e), 6) for e in (0, 2, 3, 5, 6, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def _resume_config() -> TrainConfig:
    return TrainConfig(dataset="mnist5k", epochs=3, train_subset=600, device="cpu", progress=False, seed=3)


def _cli_args(cfg: TrainConfig, out: Path) -> list[str]:
    return ["train", "--dataset", cfg.dataset, "--epochs", str(cfg.epochs), "--train-subset", str(cfg.train_subset),
            "--device", "cpu", "--seed", str(cfg.seed), "-o", str(out)]


def _kill_after_first_checkpoint(argv: list[str], checkpoint: Path, timeout: float = 300.0) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustjpeg", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training subprocess wrote no checkpoint: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_bit_identical_weights(tmp_path, single_thread):
    cfg = _resume_config()
    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(_cli_args(cfg, killed), killed / "checkpoint.pt")
    partial = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert not partial["complete"] and partial["epoch"] < cfg.epochs, "the run finished before it was killed"

    resumed = train(cfg, killed, resume=True)
    straight = train(cfg, tmp_path / "straight")
    a = torch.load(resumed["checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(straight["checkpoint"], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed weights differ from the uninterrupted run in {differing[:5]}"


def test_existing_run_needs_resume_and_resume_needs_the_same_recipe(mnist_baseline_run):
    out = Path(mnist_baseline_run["checkpoint"]).parent
    cfg = TrainConfig(dataset="mnist5k", epochs=mnist_baseline_run["epochs"], device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="--resume"):
        train(cfg, out)
    with pytest.raises(ConfigError, match="lr"):
        train(TrainConfig(dataset="mnist5k", epochs=cfg.epochs, lr=0.3, device="cpu"), out, resume=True)
    with pytest.raises(RunFolderError, match="does not exist"):
        train(cfg, out / "elsewhere", resume=True)


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "5"], "--jpeg"),
    (["--jpeg", "--jpeg-init", "sensitivity"], "--init-from"),
    (["--jpeg", "--q-max", "5"], "needs --jpeg-init sensitivity"),
    (["--jpeg", "--jpeg-init", "sensitivity", "--init-from", __file__, "--q-max", "0"], "--q-max must lie in"),
    (["--official-chroma-offset"], "add --jpeg"),
    (["--jpeg", "--official-chroma-offset"], "one-channel"),
    (["--jpeg-fixed", "50", "--jpeg-quality", "75"], "drop --jpeg-quality"),
    (["--jpeg-quality", "75"], "needs --jpeg"),
    (["--jpeg-fixed", "75", "--jpeg-lr", "0.01"], "needs --jpeg"),
    (["--jpeg", "--jpeg-init", "magic"], "standard, constant"),
    (["--jpeg", "--jpeg-init", "constant"], "--jpeg-constant"),
    (["--alpha", "5", "--hardness", "0.7"], "not allowed with"),
    (["--epochs", "0"], "--epochs"),
    (["--milestones", "5,2"], "increasing"),
    (["--train-subset", "999999"], "exceeds"),
    (["--jpeg-fixed", "0"], "1..100"),
    (["--dataset", "nosuchset"], "mnist5k"),
])
def test_cli_rejects_bad_flag_combinations_with_a_usage_error(flags, message, tmp_path, capsys):
    try:
        code = cli.main(["train", "-o", str(tmp_path / "run"), "--device", "cpu", *flags])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert message in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
