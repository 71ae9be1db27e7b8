"""`robustjpeg bench`: the embedded default runs end to end, resumes after a kill, and gates on regressions."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import robustjpeg
from robustjpeg.bench import Log, train_config, train_models
from robustjpeg.benchfile import DEFAULT_FILE, load_benchmark
from robustjpeg.cli import EXIT_CRASH, EXIT_REGRESSION, EXIT_USAGE, main
from robustjpeg.errors import ConfigError
from robustjpeg.evaluation.verdict import GRADIENT_MASKING, MASKING_CHECKS
from robustjpeg.models.codec import CHROMA_TABLE, LUMA_TABLE

from conftest import one_thread

pytestmark = pytest.mark.usefixtures("single_thread")
N = "60"


def _bench(out: Path, history: Path, *extra: str) -> int:
    return main(["bench", "-n", N, "-o", str(out), "--history", str(history), "--device", "cpu", *extra])


def _outcomes(out: Path) -> dict[str, np.ndarray]:
    return {str(p.parent.relative_to(out)): np.load(p)["robust"] for p in sorted(out.glob("runs/*/*/*/samples.npz"))}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    with one_thread():
        code = _bench(root / "out", root / "history")
    return root, code


def test_default_benchmark_is_read_from_the_installed_package():
    assert DEFAULT_FILE.is_file() and DEFAULT_FILE.parent == Path(robustjpeg.__file__).parent


@pytest.mark.slow
def test_default_benchmark_reports_both_models_with_plots_and_checks(default_run):
    root, code = default_run
    assert code in (0, 4), f"bench exited {code}"
    report = (root / "out" / "report" / "report.md").read_text()
    for model in ("baseline", "jpeg-dl"):
        assert model in report
    assert "PASS" in report, "the sanity-check table is missing"
    images = [line.split("](")[1].split(")")[0] for line in report.splitlines() if line.startswith("![")]
    assert images and all((root / "out" / "report" / img).is_file() for img in images)
    runs = {(Path(k).parts[1], Path(k).parts[3]) for k in _outcomes(root / "out")}  # runs/MODEL/KEY/SUITE
    assert runs == {("baseline", "quick"), ("jpeg-dl", "quick"), ("jpeg-dl", "adaptive-quick")}


@pytest.mark.slow
def test_exit_code_4_means_a_reported_worst_case_is_not_trustworthy(default_run):
    """A masking FAIL that the adaptive suite overcomes is no reason for exit 4; a broken evaluation is."""
    root, code = default_run
    results: dict[str, list] = {}
    for p in (root / "out").glob("runs/*/*/*/results.json"):  # runs/MODEL/KEY/SUITE
        results.setdefault(p.parent.parent.parent.name, []).append(json.loads(p.read_text()))
    hard = [c["name"] for runs in results.values() for r in runs for c in r["checks"]
            if c["status"] == "FAIL" and c["name"] not in MASKING_CHECKS]
    masked_without_adaptive = any(c["status"] == "FAIL" and c["name"] in GRADIENT_MASKING
                                  for r in results["baseline"] for c in r["checks"])
    assert code == (4 if hard or masked_without_adaptive else 0), (code, hard)


@pytest.mark.slow
def test_kill_in_the_middle_of_a_sweep_and_rerun_give_the_same_results(default_run, tmp_path, kill_pgd_after):
    root, _ = default_run
    shutil.copytree(root / "out" / "models", tmp_path / "out" / "models")  # training is reused, sweeps are cut
    kill_pgd_after(5)
    assert _bench(tmp_path / "out", tmp_path / "history") == EXIT_CRASH
    kill_pgd_after(None)
    _bench(tmp_path / "out", tmp_path / "history")
    whole, resumed = _outcomes(root / "out"), _outcomes(tmp_path / "out")
    assert whole.keys() == resumed.keys()
    assert all(np.array_equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_rerun_after_a_planted_better_run_exits_with_the_regression_code(default_run, tmp_path):
    root, _ = default_run
    history = tmp_path / "history"
    (history / "runs").mkdir(parents=True)
    planted = json.loads(sorted((root / "history" / "runs").glob("*baseline*.json"))[0].read_text())
    ones = np.packbits(np.ones(planted["n"], dtype=bool)).tobytes().hex()
    planted["outcomes"]["clean"] = ones
    for cell in planted["outcomes"]["worst"]:
        cell["bits"] = ones
    planted.update(id="planted", time="2000-01-01T00:00:00+00:00")
    (history / "runs" / "20000101T000000-baseline-planted.json").write_text(json.dumps(planted))
    shutil.copytree(root / "out", tmp_path / "out")
    assert _bench(tmp_path / "out", history) == EXIT_REGRESSION


def test_unknown_key_in_a_benchmark_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_FILE.read_text().replace("seed = 0", "seed = 0\nrandom_seed = 1"))
    assert main(["bench", str(bad)]) == EXIT_USAGE
    assert "random_seed" in capsys.readouterr().err


def test_transfer_from_an_unknown_model_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_FILE.read_text().replace('transfer_from = "baseline"', 'transfer_from = "nobody"'))
    with pytest.raises(Exception, match="nobody"):
        load_benchmark(bad)


SEEDED = """
[benchmark]
name = "seeded"
num_examples = 40
suites = ["quick", "adaptive-quick"]
suite_examples = { adaptive-quick = 20 }
seeds = [0, 1]
eps = ["0", "0.1"]
standard_eps = "0.1"

[data]
dataset = "mnist5k"

[[models]]
name = "jpeg-dl"
train = { arch = "smallcnn", variant = "jpeg", epochs = 1, jpeg_init = "constant", jpeg_constant = 12.0 }

[[models]]
name = "control"
train = { arch = "smallcnn", variant = "jpeg-fixed", epochs = 1, jpeg_quality = "match:jpeg-dl" }
suites = ["adaptive-quick"]
transfer_from = "jpeg-dl"
"""


def _closest_quality(steps: np.ndarray) -> int:
    """Brute force in numpy: the IJG quality whose scaled Annex K tables are nearest in mean |log ratio|."""
    base = np.array([LUMA_TABLE, CHROMA_TABLE], dtype=np.int64)[: len(steps)]
    dist = [np.abs(np.log(np.clip((base * (5000 // q if q < 50 else 200 - 2 * q) + 50) // 100, 1, 255))
                   - np.log(steps)).mean() for q in range(1, 101)]
    return 1 + int(np.argmin(dist))


@pytest.mark.slow
def test_seeds_matched_controls_and_per_suite_sizes(tmp_path):
    path = tmp_path / "seeded.toml"
    path.write_text(SEEDED)
    with one_thread():
        assert main(["bench", str(path), "-o", str(tmp_path / "out"), "--device", "cpu"]) in (0, 4)
    folders = {p.name.rsplit("-", 1)[0]: p for p in (tmp_path / "out" / "models").iterdir()}
    assert set(folders) == {"jpeg-dl-s0", "jpeg-dl-s1", "control-s0", "control-s1"}
    for seed in (0, 1):
        learned = torch.load(folders[f"jpeg-dl-s{seed}"] / "checkpoint.pt", weights_only=True)
        learned = next(v for k, v in learned["state_dict"].items() if k.endswith("tables")).numpy()
        control = torch.load(folders[f"control-s{seed}"] / "checkpoint.pt", weights_only=True)
        assert control["train_config"]["seed"] == seed and learned.shape[0] == 1
        fixed = next(v for k, v in control["state_dict"].items() if k.endswith("tables")).numpy()
        expected = _closest_quality(learned)
        assert expected != 50, "a constant table should not match the standard quality 50"
        assert control["train_config"]["jpeg_quality"] == expected
        assert np.array_equal(fixed, np.clip((np.array([LUMA_TABLE]) * (5000 // expected if expected < 50 else
                                                                          200 - 2 * expected) + 50) // 100, 1, 255))
    sizes = {}
    for results in (tmp_path / "out" / "runs").glob("*/*/*/results.json"):
        model, suite = results.parts[-4], results.parts[-2]
        sizes[model, suite] = json.loads(results.read_text())["n"]
        indices = set(np.load(results.parent / "samples.npz")["indices"].tolist())
        sizes[model, suite, "indices"] = indices
    assert sizes["jpeg-dl-s0", "quick"] == 40 and sizes["jpeg-dl-s0", "adaptive-quick"] == 20
    assert sizes["control-s1", "adaptive-quick"] == 20 and ("control-s1", "quick") not in sizes
    assert sizes["jpeg-dl-s1", "adaptive-quick", "indices"] < sizes["jpeg-dl-s1", "quick", "indices"]


@pytest.mark.parametrize("change, named", [
    ('jpeg_quality = "match:jpeg-dl"', 'jpeg_quality = "match:nobody"'),
    ("suite_examples = { adaptive-quick = 20 }", "suite_examples = { standard = 20 }"),
    ("seeds = [0, 1]", "seeds = [1, 1]"),
])
def test_bad_seeds_matches_and_suite_sizes_are_refused(tmp_path, change, named):
    path = tmp_path / "bad.toml"
    path.write_text(SEEDED.replace(change, named))
    with pytest.raises(ConfigError, match=named.split(" = ")[0].split()[-1]):
        load_benchmark(path)


PAPER_INIT = """
[benchmark]
name = "paper-init"
num_examples = 20
#SEEDS

[data]
dataset = "mnist5k"

[[models]]
name = "baseline"
train = { arch = "smallcnn", epochs = 1, train_subset = 1500 }

[[models]]
name = "jpeg-dl"
train = { arch = "smallcnn", variant = "jpeg", epochs = 1, train_subset = 1500, jpeg_init = "sensitivity", DL_INIT }

[[models]]
name = "control"
train = { arch = "smallcnn", variant = "jpeg-fixed", epochs = 1, train_subset = 1500, jpeg_init = "sensitivity", CONTROL_INIT }
"""
SOURCE = 'init_from = "baseline", q_max = 8.0'


def _paper_init(tmp_path: Path, dl: str = SOURCE, control: str = SOURCE, seeds: str = "") -> Path:
    """A benchmark of a baseline, JPEG-DL from its sensitivity and the frozen control with the same init."""
    path = tmp_path / "paper-init.toml"
    path.write_text(PAPER_INIT.replace("DL_INIT", dl).replace("CONTROL_INIT", control).replace("#SEEDS", seeds))
    return path


def _tables(checkpoint: dict) -> torch.Tensor:
    return next(v for k, v in checkpoint["state_dict"].items() if k.endswith("tables"))


@pytest.mark.slow
def test_sensitivity_control_starts_from_jpeg_dl_tables_and_keeps_them_while_jpeg_dl_learns(tmp_path):
    bench = load_benchmark(_paper_init(tmp_path))
    with one_thread():
        checkpoints = train_models(bench, tmp_path / "out", "cpu", Log(io.StringIO()))
    dl, control = (torch.load(checkpoints[name], weights_only=True) for name in ("jpeg-dl", "control"))
    start = torch.tensor(dl["jpeg_start_tables"])
    assert dl["train_config"]["init_from"] == control["train_config"]["init_from"] == str(checkpoints["baseline"])
    assert float(start.max()) == pytest.approx(8.0), "the largest luma step of the sensitivity tables is q_max"
    assert torch.equal(torch.tensor(control["jpeg_start_tables"]), start), "the control started from other tables"
    assert torch.equal(_tables(control), start), "the frozen control's tables moved in training"
    moved = float((_tables(dl) - start).abs().max())
    assert moved > 1e-3, f"JPEG-DL's tables did not learn (largest change {moved:.2e})"


@pytest.mark.parametrize("changes, message", [
    ({"dl": 'init_from = "nobody"'}, "names no model"),
    ({"dl": 'init_from = "control"'}, "comes later"),
    ({"control": 'init_from = "jpeg-dl"'}, "not a baseline"),
    ({"dl": "q_max = 8.0"}, "go together"),
    ({"dl": 'init_from = "baseline", q_max = 0'}, "q_max = 0"),
], ids=["unknown-name", "later-model", "not-a-baseline", "sensitivity-without-init-from", "q-max-zero"])
def test_bad_init_from_and_q_max_are_refused_when_the_file_loads(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_benchmark(_paper_init(tmp_path, **changes))
    assert "\n" not in str(err.value) and "paper-init.toml" in str(err.value)


def test_init_from_pairs_within_a_seed(tmp_path):
    bench = load_benchmark(_paper_init(tmp_path, seeds="seeds = [0, 1]"))
    sources = {m.name: m.train.get("init_from") for m in bench.models}
    assert sources == {"baseline-s0": None, "jpeg-dl-s0": "baseline-s0", "control-s0": "baseline-s0",
                       "baseline-s1": None, "jpeg-dl-s1": "baseline-s1", "control-s1": "baseline-s1"}


BENCHMARK_FILES = [DEFAULT_FILE, *sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.toml"))]
FAMILIES = {"mnist5k": "mnist", "flowers102": "fine"}  # every other committed benchmark trains on CIFAR-10 JPEG


@pytest.mark.parametrize("path", BENCHMARK_FILES, ids=lambda p: p.name)
def test_every_committed_benchmark_file_loads_and_its_recipes_resolve(path):
    bench = load_benchmark(path)
    for entry in bench.models:
        if entry.train is None:
            continue
        train = dict(entry.train)
        if str(train.get("jpeg_quality", "")).startswith("match:"):
            train["jpeg_quality"] = 50  # resolved from the source model once it is trained
        if "init_from" in train:
            train["init_from"] = str(path)  # any existing file stands in for the source's checkpoint
        train_config(bench, dataclasses.replace(entry, train=train), "cpu").resolved(FAMILIES.get(bench.dataset, "cifar"))


def _bench_of_one(tmp_path: Path, name: str, checkpoint: Path) -> int:
    """Run a benchmark that loads one model from a file; the exit code."""
    path = tmp_path / "bench.toml"
    path.write_text(f'[data]\ndataset = "mnist5k"\n\n[[models]]\nname = "{name}"\n'
                    f'load = {{ source = "{checkpoint.as_posix()}" }}\n')
    return main(["bench", str(path), "-o", str(tmp_path / "out"), "--device", "cpu"])


def test_a_loaded_model_with_the_wrong_class_count_is_refused_before_any_sweep(tmp_path, capsys):
    from robustjpeg.models.factory import ModelSpec, build_model

    spec = ModelSpec(arch="smallcnn", num_classes=7, in_channels=1, mean=(0.13,), std=(0.31,), input_size=28)
    torch.save({"schema": "robustjpeg.checkpoint/1", "model_spec": spec.to_dict(),
                "state_dict": build_model(spec).state_dict(), "complete": True, "epoch": 1}, tmp_path / "seven.pt")
    assert _bench_of_one(tmp_path, "seven", tmp_path / "seven.pt") == EXIT_USAGE
    assert "has 10 classes" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("runs/*/*/*/cells/*")), "a sweep started on a model that cannot fit"


def test_a_loaded_model_that_returns_probabilities_is_refused_before_any_sweep(tmp_path, capsys):
    from sweep_models import eval_set, trained_cnn

    x, _ = eval_set(2)
    torch.jit.trace(torch.nn.Sequential(trained_cnn(), torch.nn.Softmax(dim=1)), x).save(str(tmp_path / "soft.pt"))
    assert _bench_of_one(tmp_path, "soft", tmp_path / "soft.pt") == EXIT_USAGE
    assert "model soft: the model returns probabilities" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("runs/*/*/*/cells/*")), "a sweep started on a model returning probabilities"


def test_sweeps_run_suite_by_suite_so_cheap_suites_finish_for_every_model_first():
    from robustjpeg.bench import _sweep_order

    bench = load_benchmark(Path(__file__).resolve().parents[1] / "bench" / "study-cpu.toml")
    order = [(entry.name, suite) for entry, suite in _sweep_order(bench, None)]
    models = ("baseline", "jpeg-dl", "jpeg-fixed")
    assert order == [(m, s) for s in ("paper", "adaptive") for m in models] + [(m, "standard") for m in models[:2]]
    assert [s for _, s in _sweep_order(bench, ["quick"])] == ["quick"] * 3


# --- faults: kills at random points, a second bench on the same folder -----------------------------------------

TINY = """
[benchmark]
name = "tiny"
num_examples = 40
suites = ["quick"]
eps = ["0", "0.1", "0.3"]

[data]
dataset = "mnist5k"

[[models]]
name = "cnn"
train = { arch = "smallcnn", epochs = 2, train_subset = 400, batch_size = 64 }
"""


def _tiny_bench(folder: Path) -> list[str]:
    path = folder / "tiny.toml"
    path.write_text(TINY)
    out = folder / "out"
    return ["bench", str(path), "-o", str(out), "--history", str(out / "history"), "--device", "cpu",
            "--standard-eps", "0.1"]


def _files(out: Path, pattern: str) -> dict[str, Path]:
    """Files by path under out, with runs/MODEL/KEY/ read as runs/MODEL/ (KEY hashes the checkpoint's bytes, which
    hold training times)."""
    names = {p: p.relative_to(out).parts for p in sorted(out.glob(pattern))}
    return {"/".join(parts[:2] + parts[3:] if parts[0] == "runs" else parts): p for p, parts in names.items()}


def _killed_at(args: list[str], out: Path, k: int, before: bool) -> int:
    """Run the bench in a forked child that SIGKILLs itself at its k-th file write into out (before or after the
    rename that publishes it, i.e. mid-write or just after); returns the child's exit code."""
    import multiprocessing
    import os
    import signal

    def child() -> None:
        real, writes = os.replace, []

        def replace(src, dst):
            mine = str(dst).startswith(str(out))
            writes.extend([dst] if mine else [])
            if mine and len(writes) == k and before:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if mine and len(writes) == k:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
        main(args)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=300)
    return process.exitcode


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """An uninterrupted tiny bench, with the number of files it writes into its output folder."""
    import os

    root = tmp_path_factory.mktemp("tiny-reference")
    args, out = _tiny_bench(root), root / "out"
    real, writes = os.replace, []

    def counting(src, dst):
        writes.extend([dst] if str(dst).startswith(str(out)) else [])
        real(src, dst)

    with one_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting)
        assert main(args) in (0, 4)
    return out, len(writes)


@pytest.mark.slow
def test_the_tiny_bench_uses_the_standard_budget_given_on_the_command_line(tiny_reference):
    out, _ = tiny_reference
    results = [json.loads(p.read_text()) for p in _files(out, "runs/*/*/*/results.json").values()]
    assert [r["standard_eps"] for r in results] == [0.1] and [r["eps"] for r in results] == [[0.0, 0.1, 0.3]]


def test_rerunning_a_finished_bench_recomputes_no_cell_and_adds_no_history_record(tiny_reference, tmp_path):
    reference, _ = tiny_reference
    args = _tiny_bench(tmp_path)
    shutil.copytree(reference, tmp_path / "out")
    cells = {name: p.stat().st_mtime_ns for name, p in _files(tmp_path / "out", "runs/**/cells/*.npz").items()}
    with one_thread():
        assert main(args) in (0, 4)
    assert {name: p.stat().st_mtime_ns for name, p in _files(tmp_path / "out", "runs/**/cells/*.npz").items()} == cells
    assert len(_files(tmp_path / "out", "history/runs/*.json")) == 1, "the rerun added a duplicate history record"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bench_killed_at_a_random_write_resumes_to_the_same_results_without_recomputing(tiny_reference, tmp_path,
                                                                                       seed):
    import random

    reference, writes = tiny_reference
    rng = random.Random(seed)
    k, before = rng.randint(1, writes), rng.random() < 0.5
    args, out = _tiny_bench(tmp_path), tmp_path / "out"
    with one_thread():
        assert _killed_at(args, out, k, before) == -9, f"the bench was not killed at write {k} of {writes}"
        survivors = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in _files(out, "runs/**/cells/*.npz").items()}
        assert main(args) in (0, 4), f"the rerun after a kill at write {k} of {writes} failed"
    resumed = _files(out, "runs/**/cells/*.npz")
    assert resumed.keys() == _files(reference, "runs/**/cells/*.npz").keys()
    recomputed = [name for name, stat in survivors.items()
                  if (resumed[name].stat().st_ino, resumed[name].stat().st_mtime_ns) != stat]
    assert not recomputed, f"cells finished before the kill were computed again: {recomputed}"
    finished = _files(out, "runs/*/*/*/samples.npz")
    for name, path in _files(reference, "runs/*/*/*/samples.npz").items():
        with np.load(path) as want, np.load(finished[name]) as got:
            assert all(np.array_equal(want[key], got[key]) for key in want.files), f"{name} differs after the kill"
    weights = [torch.load(p, weights_only=True)["state_dict"] for p in
               (next(reference.glob("models/*/checkpoint.pt")), next(out.glob("models/*/checkpoint.pt")))]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0]), "training did not resume exactly"
    assert len(_files(out, "history/runs/*.json")) == len(_files(reference, "history/runs/*.json")) == 1
    assert not (out / ".robustjpeg.lock").exists(), "the rerun left its lock behind"


HOLD_LOCK = """
import sys, time
from robustjpeg.utils.lock import folder_lock
with folder_lock(sys.argv[1], "bench"):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_bench_on_the_same_folder_is_refused_naming_the_holder_until_it_dies(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    args, out = _tiny_bench(tmp_path), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert main(args) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [".robustjpeg.lock"], "the refused bench wrote into the folder"
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((out / ".robustjpeg.lock").read_text())["pid"] == holder.pid, "the dead holder's lock is gone"
    from robustjpeg.utils.lock import folder_lock

    with folder_lock(out, "bench") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid(), "the stale lock of a dead process was not taken over"
