"""The sweep engine gives the naive torchattacks loop's per-sample results for fewer passes, resumes exactly, and
writes the run folder of the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robustjpeg.attacks.suites import Suite, load_suite
from robustjpeg.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main
from robustjpeg.data.datasets import eval_tensors, load_dataset
from robustjpeg.errors import BadInput, ConfigError, RobustJpegWarning, RunFolderError
from robustjpeg.evaluation.reference import reference_sweep
from robustjpeg.evaluation.results import cell_metas, read_run
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep
from robustjpeg.report.runs import load_run
from robustjpeg.utils.gpu import CPU_BATCH, MAX_BATCH, ChannelsLastInput, fit_batch
from robustjpeg.utils.io import file_sha256

from conftest import Killed, one_thread
from sweep_models import eval_set, suite_toml, trained_cnn, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")

FGSM = {"name": "fgsm", "kind": "fgsm"}
DETERMINISTIC = suite_toml(["0", "2/255", "8/255", "16/255", "32/255", "64/255"], FGSM,
                           {"name": "pgd", "kind": "pgd", "steps": 5, "random_start": False},
                           {"name": "pgd-l2", "kind": "pgd", "norm": "L2", "steps": 5, "random_start": False},
                           {"name": "ddn", "kind": "ddn", "steps": 20}, l2_eps=[0.0, 0.5, 1.0, 2.0])


@pytest.fixture(scope="module")
def deterministic_runs(tmp_path_factory):
    """One engine run and one naive loop over the same model, digits and deterministic suite."""
    folder = tmp_path_factory.mktemp("det")
    suite = load_suite(write_suite(folder, DETERMINISTIC))
    with one_thread():
        model, (x, y) = trained_cnn(), eval_set(80)
        with torch.no_grad():  # the engine turns gradients back on where attacks need them
            results = run_sweep(model, x, y, suite, folder / "run", SweepConfig(batch_size=32, progress=False))
        naive, naive_passes = reference_sweep(model, x, y, suite, batch_size=32)
    return read_run(folder / "run"), results, naive, naive_passes


def test_sweep_breaks_every_sample_the_naive_torchattacks_loop_breaks(deterministic_runs):
    """FGSM cells equal the naive loop's; the engine's early-exit PGD breaks a superset of torchattacks' PGD."""
    run, _, naive, _ = deterministic_runs
    assert [k for k in run.samples["cell_keys"] if not k.startswith("ddn|")] == list(naive)
    for key, robust in naive.items():
        engine = run.cell(key)
        if key.startswith("fgsm|"):
            assert np.array_equal(engine, robust), f"{key}: engine and naive loop disagree on some samples"
        assert not (engine & ~robust).any(), f"{key}: the engine calls robust a sample the naive loop broke"


def test_sweep_spends_fewer_passes_than_naive_loop(deterministic_runs):
    run, _, _, naive_passes = deterministic_runs
    engine = sum(sum(m["passes"].values()) for m in cell_metas(run.folder) if m["attack"] in naive_passes)
    naive = sum(sum(p.values()) for p in naive_passes.values())
    assert engine < 0.6 * naive, (run.run["passes_attacks"], naive_passes)


def test_cascade_gives_the_full_worst_case_sample_by_sample_for_fewer_passes(deterministic_runs, tmp_path):
    """cascade = true on the same deterministic suite: every worst case is the full mode's, sample by sample; each
    per-attack cell is the full mode's AND over that attack, the ones above it and the minimum-norm ones (of its
    norm; those run first); fewer passes."""
    full, _, _, _ = deterministic_runs
    suite = load_suite(write_suite(tmp_path, DETERMINISTIC.replace('eps = [', 'cascade = true\neps = [', 1)))
    assert suite.cascade
    model, (x, y) = trained_cnn(), eval_set(80)
    results = run_sweep(model, x, y, suite, tmp_path / "run", SweepConfig(batch_size=32, progress=False))
    cascade = read_run(tmp_path / "run")
    assert results["cascade"] is True and full.results["cascade"] is False
    assert list(cascade.samples["worst_keys"]) == list(full.samples["worst_keys"])
    assert np.array_equal(cascade.samples["worst"], full.samples["worst"])
    for key in (k for k in full.samples["cell_keys"] if k.startswith("pgd|")):
        budget = key.split("|", 1)[1]
        assert np.array_equal(cascade.cell(key), full.cell(f"fgsm|{budget}") & full.cell(key)), key
    for key in (k for k in full.samples["cell_keys"] if k.startswith("pgd-l2|")):
        budget = key.split("|", 1)[1]
        assert np.array_equal(cascade.cell(key), full.cell(f"ddn|{budget}") & full.cell(key)), f"{key}: after DDN"
    for key in (k for k in full.samples["cell_keys"] if k.startswith(("fgsm|", "ddn|"))):
        assert np.array_equal(cascade.cell(key), full.cell(key)), f"{key}: first of its norm, or minimum-norm"
    spent = {name: {attack: sum(sum(m["passes"].values()) for m in cell_metas(run.folder) if m["attack"] == attack)
                    for attack in ("pgd", "pgd-l2")} for name, run in (("full", full), ("cascade", cascade))}
    assert all(spent["cascade"][a] < spent["full"][a] for a in ("pgd", "pgd-l2")), spent
    checks = {c["id"]: c for c in results["checks"]}
    assert checks[6]["status"] == "SKIP" and "cascade" in checks[6]["detail"]


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.0)])
def test_early_exit_pgd_breaks_a_superset_of_torchattacks_pgd_with_fewer_passes(norm, eps):
    """Same steps, seed, step size and random start: every digit torchattacks' last-iterate PGD breaks, the early-exit
    loop breaks too, inside the budget, for fewer forward and backward passes (the engine's pass counter)."""
    import torchattacks

    from robustjpeg.attacks.pgd import early_exit_pgd
    from robustjpeg.evaluation.engine import PassCounter, perturbation_norm

    model, (x, y) = trained_cnn(), eval_set(100)
    theirs, ours = {"forward": 0, "backward": 0}, {"forward": 0, "backward": 0}
    cls, alpha = (torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2), 2.5 * eps / 10
    torch.manual_seed(7)
    reference = cls(PassCounter(model, theirs), eps=eps, alpha=alpha, steps=10)(x, y)
    torch.manual_seed(7)
    adv = early_exit_pgd(PassCounter(model, ours), x, y, eps, steps=10, alpha=alpha, norm=norm)
    with torch.no_grad():
        broken_theirs, broken_ours = model(reference).argmax(1) != y, model(adv).argmax(1) != y
    assert broken_theirs.any() and not (broken_theirs & ~broken_ours).any()
    assert float(perturbation_norm(adv - x, norm).max()) <= eps + 1e-5 and 0 <= float(adv.min()) <= float(adv.max()) <= 1
    assert ours["forward"] < theirs["forward"] and ours["backward"] < theirs["backward"], (ours, theirs)


def test_budget_zero_equals_clean_accuracy(deterministic_runs):
    _, results, _, _ = deterministic_runs
    zero = [c for c in results["cells"] if c["eps"] == 0]
    assert len(zero) == 4
    assert all(c["robust"] == results["clean"]["correct"] for c in zero)
    assert results["checks"][0]["status"] == "PASS"


def test_every_adversarial_example_is_in_budget_and_range(deterministic_runs):
    run, _, _, _ = deterministic_runs
    attacked = [m["stats"] for m in cell_metas(run.folder) if m["stats"]]
    assert attacked, "no cell crafted an adversarial example"
    for stats in attacked:
        assert stats.get("max_excess", 0.0) <= 1e-6 and stats["min"] >= 0 and stats["max"] <= 1 and stats["nan"] == 0


def test_run_folder_follows_the_contract(deterministic_runs):
    run, results, _, _ = deterministic_runs
    assert run.run["status"] == "complete" and run.run["passes"]["backward"] > 0 and run.run["wall_time_s"] > 0
    assert results["clean"]["accuracy"] == pytest.approx(run.samples["clean_correct"].mean())
    cell = results["cells"][0]
    assert {"attack", "kind", "norm", "eps", "n", "robust", "accuracy", "ci95"} <= set(cell)
    assert [c["id"] for c in results["checks"]] == [1, *range(3, 15), 17, 18]
    assert [c["id"] for c in results["invariants"]] == [2, 15, 16] and all(c["held"] for c in results["invariants"])
    assert run.samples["robust"].shape == (len(run.samples["cell_keys"]), 80)
    assert list(run.samples["distance_keys"]) == ["ddn|L2"]
    ddn, clean = run.samples["distances"][0], run.samples["clean_correct"]
    assert np.isfinite(ddn[clean]).all() and (ddn[~clean] == 0).all(), "DDN should break every clean digit"
    at_one = run.cell("ddn|L2|1")
    assert np.array_equal(at_one, clean & (ddn > 1.0))
    worst = run.samples["worst"][list(run.samples["worst_keys"]).index("Linf|0.1254902")]
    assert np.array_equal(worst, run.cell("fgsm|Linf|0.1254902") & run.cell("pgd|Linf|0.1254902"))


@pytest.mark.parametrize("cascade", [False, True])
def test_kill_and_resume_give_identical_results(tmp_path, kill_pgd_after, cascade):
    """A minimum-norm attack in the suite too: under cascade its cell is finished first and reused by the resume."""
    pgd, pgd_l2 = {"name": "pgd", "kind": "pgd", "steps": 4, "restarts": 2}, {"name": "pgd-l2", "kind": "pgd", "norm": "L2"}
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "4/255", "16/255", "48/255"], FGSM, pgd, pgd_l2,
                                                        {"name": "ddn", "kind": "ddn", "steps": 10},
                                                        l2_eps=[0.0, 0.5, 1.0], cascade=cascade)))
    model, (x, y) = trained_cnn(), eval_set(40)
    whole = run_sweep(model, x, y, suite, tmp_path / "whole", SweepConfig(seed=3, progress=False))
    kill_pgd_after(3)
    with pytest.raises(Killed):
        run_sweep(model, x, y, suite, tmp_path / "cut", SweepConfig(seed=3, progress=False))
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut" / "cells").glob("*.npz")}
    assert finished and json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "running"
    kill_pgd_after(None)
    resumed = run_sweep(model, x, y, suite, tmp_path / "cut", SweepConfig(seed=3, resume=True, progress=False))
    assert {p: (tmp_path / "cut" / "cells" / p).stat().st_mtime_ns for p in finished} == finished, "finished cells redone"
    assert [c["robust"] for c in resumed["cells"]] == [c["robust"] for c in whole["cells"]]
    assert np.array_equal(read_run(tmp_path / "cut").samples["robust"], read_run(tmp_path / "whole").samples["robust"])


def test_existing_run_folder_needs_resume_and_the_same_sweep(tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "8/255"], FGSM)))
    model, (x, y) = trained_cnn(), eval_set(20)
    run_sweep(model, x, y, suite, tmp_path / "run", SweepConfig(progress=False))
    with pytest.raises(RunFolderError, match="--resume"):
        run_sweep(model, x, y, suite, tmp_path / "run", SweepConfig(progress=False))
    with pytest.raises(RunFolderError, match="different sweep"):
        run_sweep(model, x, y, suite, tmp_path / "run", SweepConfig(seed=1, resume=True, progress=False))


def test_normalised_inputs_are_refused_with_hint(tmp_path):
    model, (x, y) = trained_cnn(), eval_set(10)
    with pytest.raises(BadInput, match="inside the model"):
        run_sweep(model, (x - 0.5) / 0.25, y, load_suite("quick"), tmp_path / "run", SweepConfig(progress=False))


class RunsOutOfMemoryAbove(torch.nn.Module):
    """Stands in for a GPU that cannot hold more than `limit` images at once."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, x):
        if len(x) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x)


def test_batch_halves_on_out_of_memory_and_results_do_not_change(tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "8/255", "32/255"], {"name": "pgd", "kind": "pgd", "steps": 3, "random_start": False})))
    model, (x, y) = trained_cnn(), eval_set(40)
    small = run_sweep(model, x, y, suite, tmp_path / "small", SweepConfig(batch_size=8, progress=False))
    halved = run_sweep(RunsOutOfMemoryAbove(model, 10), x, y, suite, tmp_path / "halved", SweepConfig(batch_size=64, progress=False))
    assert [c["robust"] for c in halved["cells"]] == [c["robust"] for c in small["cells"]]
    run = json.loads((tmp_path / "halved" / "run.json").read_text())
    assert run["batch_size"] == 64 and run["batch_size_final"] <= 10


def test_attack_batch_fills_half_the_free_memory_within_the_data_and_the_cap():
    mib = 2 ** 20
    assert fit_batch(8 * 1024 * mib, 10 * mib, n=10_000) == 409  # half of 8 GiB over 10 MiB a sample
    assert fit_batch(8 * 1024 * mib, 10 * mib, n=100) == 100
    assert fit_batch(10 ** 15, 1.0, n=10 ** 6) == MAX_BATCH
    assert fit_batch(mib, 10 * mib, n=100) == 1  # one sample more than fits still runs (out-of-memory halving)


def test_unset_batch_size_is_the_cpu_batch_off_a_gpu_and_a_bad_one_is_refused(tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "8/255"], FGSM)))
    run_sweep(trained_cnn(), *eval_set(20), suite, tmp_path / "run", SweepConfig(progress=False))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["batch_size"] is None and run["batch_size_final"] == CPU_BATCH
    with pytest.raises(ConfigError, match="positive number of images"):
        SweepConfig(batch_size=0)


def test_unset_batch_size_is_probed_once_per_sweep_and_every_engine_uses_it(tmp_path, monkeypatch):
    import robustjpeg.evaluation.sweep as sweep_module

    calls = []
    monkeypatch.setattr(sweep_module, "attack_batch_size", lambda model, x, device: calls.append(len(x)) or 7)
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "8/255"], FGSM)))
    run_sweep(trained_cnn(), *eval_set(20), suite, tmp_path / "run", SweepConfig(progress=False))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert calls == [20] and run["batch_size"] is None and run["batch_size_final"] == 7


def test_channels_last_wrapper_feeds_the_model_channels_last_and_changes_no_logit():
    seen, model = [], nn.Conv2d(3, 4, 3)  # three channels: a one-channel tensor is both layouts at once
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ChannelsLastInput(model)(x), model(x))
    assert seen == [True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fast_path_gives_the_cpu_outcomes_of_a_deterministic_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, DETERMINISTIC))
    model, (x, y) = trained_cnn(), eval_set(64)
    cpu = run_sweep(model, x, y, suite, tmp_path / "cpu", SweepConfig(progress=False))
    gpu = run_sweep(model, x, y, suite, tmp_path / "gpu", SweepConfig(device="cuda", progress=False))
    assert [c["robust"] for c in gpu["cells"]] == pytest.approx([c["robust"] for c in cpu["cells"]], abs=1 / 64)
    run = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert 1 <= run["batch_size_final"] <= len(y)


def test_undefended_model_falls_to_zero_at_standard_budget_and_chance_at_one(tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "0.1", "0.3"], {"name": "pgd", "kind": "pgd", "steps": 10})))
    results = run_sweep(trained_cnn(), *eval_set(40), suite, tmp_path / "run", SweepConfig(progress=False))
    checks = {c["id"]: c for c in results["checks"]}
    assert checks[13]["status"] == "PASS", checks[13]
    assert checks[5]["status"] == "PASS", checks[5]


def test_suite_in_run_json_reads_back_as_the_same_suite(deterministic_runs):
    run, _, _, _ = deterministic_runs
    suite = Suite.from_dict(run.run["suite"])
    assert suite.to_dict() == run.run["suite"] and [a.name for a in suite.attacks] == ["fgsm", "pgd", "pgd-l2", "ddn"]


def test_sweep_command_needs_an_output_folder(capsys):
    assert main(["sweep", "model.pt", "--dataset", "mnist5k"]) == EXIT_USAGE
    assert "-o/--out" in capsys.readouterr().err


def test_sweep_command_wires_model_data_suite_and_eps_override(tmp_path, monkeypatch):
    """The command end to end on mnist5k, the tests' CNN saved as a TorchScript file (it needs no --arch)."""
    x, _ = eval_set(2)
    torch.jit.trace(trained_cnn(), x).save(str(tmp_path / "tiny.pt"))
    suite = write_suite(tmp_path, suite_toml(["0", "0.3"], FGSM))
    code = main(["sweep", str(tmp_path / "tiny.pt"), "--dataset", "mnist5k", "-n", "20", "--suite", str(suite), "--eps", "0,0.1",
                 "--standard-eps", "0.1", "-o", str(tmp_path / "run"), "--device", "cpu"])
    run = read_run(tmp_path / "run")
    assert code in (EXIT_OK, EXIT_CHECK_FAILED) and run.results["n"] == 20
    assert run.results["model"] == f"tiny-{file_sha256(tmp_path / 'tiny.pt')[:8]}"
    assert sorted({c["eps"] for c in run.results["cells"]}) == [0.0, 0.1] and run.results["standard_eps"] == 0.1
    expected = eval_tensors(load_dataset("mnist5k"), 20, 0)[2].numpy()
    assert run.run["dataset"] == "mnist5k" and np.array_equal(run.samples["indices"], expected)


def test_sweep_leaves_batch_norm_in_eval_mode_and_its_statistics_untouched(tmp_path):
    x, y = eval_set(40)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), trained_cnn())
    model[0](x)  # one pass in training mode gives the norm layer real running statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "0.1"], FGSM, {"name": "pgd", "kind": "pgd", "steps": 3})))
    results = run_sweep(model, x, y, suite, tmp_path / "run", SweepConfig(progress=False))
    assert not any(m.training for m in model.modules()), "the sweep left the model in training mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "batch-norm statistics changed"
    assert {c["id"]: c["status"] for c in results["checks"]}[1] == "PASS"


# --- threads, damaged run folders ---------------------------------------------------------------------------------

def test_per_sample_outcomes_are_the_same_with_one_and_two_threads(mnist_jpeg_run, tmp_path):
    """A trained JPEG-DL model under FGSM and random-start PGD on MNIST budgets: per-sample outcomes do not depend
    on how many threads torch splits its kernels over (training's float rounding does; README, Threads)."""
    from robustjpeg.models.loading import load_model

    model, info = load_model(mnist_jpeg_run["checkpoint"])
    x, y = eval_set(40)
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "0.1", "0.3"], FGSM, {"name": "pgd", "kind": "pgd"})))
    outcomes = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        run_sweep(model, x, y, suite, tmp_path / f"t{threads}", SweepConfig(progress=False), model_info=info)
        outcomes[threads] = dict(np.load(tmp_path / f"t{threads}" / "samples.npz"))
    torch.set_num_threads(1)
    assert outcomes[1].keys() == outcomes[2].keys()
    for name, one in outcomes[1].items():
        assert np.array_equal(one, outcomes[2][name]), f"{name} differs between 1 and 2 threads"


@pytest.fixture
def finished_run(tmp_path):
    """A finished sweep of the tiny trained CNN (FGSM and PGD over three budgets) and its per-sample outcomes."""
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "0.1", "0.3"], FGSM,
                                                         {"name": "pgd", "kind": "pgd", "steps": 5})))
    x, y = eval_set(40)
    run_sweep(trained_cnn(), x, y, suite, tmp_path / "run", SweepConfig(progress=False))
    with np.load(tmp_path / "run" / "samples.npz") as samples:
        outcomes = {k: samples[k] for k in samples.files}
    return tmp_path / "run", (suite, x, y), outcomes


def _stats(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((folder / "cells").glob("*.npz"))}


def _same_outcomes(folder, outcomes) -> bool:
    with np.load(folder / "samples.npz") as samples:
        return samples.files == list(outcomes) and all(np.array_equal(samples[k], v) for k, v in outcomes.items())


def test_a_corrupt_cell_file_is_computed_again_with_a_warning_naming_it(finished_run):
    folder, (suite, x, y), outcomes = finished_run
    cell = folder / "cells" / "pgd_Linf_0.1.npz"
    cell.write_bytes(cell.read_bytes()[:100])
    before = _stats(folder)
    with pytest.warns(RobustJpegWarning, match=f"{cell}.*computing that cell again"):
        run_sweep(trained_cnn(), x, y, suite, folder, SweepConfig(resume=True, progress=False))
    after = _stats(folder)
    assert [name for name in before if before[name] != after[name]] == [cell.name], "only the corrupt cell is redone"
    assert _same_outcomes(folder, outcomes)


def test_a_corrupt_run_json_is_named_and_moving_it_aside_recovers_without_recomputing(finished_run, capsys):
    folder, (suite, x, y), outcomes = finished_run
    (folder / "run.json").write_text('{"status": "comp')
    assert main(["report", str(folder), "-o", str(folder.parent / "report")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(folder / "run.json") in err and "move it aside" in err and "--resume" in err
    before = _stats(folder)
    (folder / "run.json").rename(folder / "run.json.broken")
    run_sweep(trained_cnn(), x, y, suite, folder, SweepConfig(resume=True, progress=False))
    assert _stats(folder) == before, "finished cells were computed again"
    assert _same_outcomes(folder, outcomes)
    assert main(["report", str(folder), "-o", str(folder.parent / "report")]) == EXIT_OK


@pytest.mark.parametrize("name", ["results.json", "samples.npz"])
def test_a_corrupt_summary_file_says_the_resumed_sweep_rebuilds_it(finished_run, name):
    folder, (suite, x, y), outcomes = finished_run
    (folder / name).write_bytes(b"\x00garbage")
    with pytest.raises(RunFolderError, match=f"{folder / name}.*rerun the same sweep with --resume: it rebuilds"):
        load_run(folder)
    before = _stats(folder)
    run_sweep(trained_cnn(), x, y, suite, folder, SweepConfig(resume=True, progress=False))
    assert _stats(folder) == before and _same_outcomes(folder, outcomes)
    load_run(folder)


def test_a_shipped_suite_on_mnist_sweeps_the_mnist_budgets_with_its_headline(tmp_path):
    """The README's `sweep ... --dataset mnist5k` with the default quick suite: budgets up to 0.3, headline at 0.3."""
    from robustjpeg.attacks.budgets import FAMILY_BUDGETS

    x, _ = eval_set(2)
    torch.jit.trace(trained_cnn(), x).save(str(tmp_path / "tiny.pt"))
    assert main(["sweep", str(tmp_path / "tiny.pt"), "--dataset", "mnist5k", "-n", "20", "-o", str(tmp_path / "run"),
                 "--device", "cpu"]) in (EXIT_OK, EXIT_CHECK_FAILED)
    results = read_run(tmp_path / "run").results
    grid, standard = FAMILY_BUDGETS["mnist"]
    assert results["eps"] == grid and results["standard_eps"] == standard
    assert any(w["norm"] == "Linf" and w["eps"] == standard for w in results["worst_case"]), "the headline is missing"
    checks = {c["name"]: c["status"] for c in results["checks"]}
    assert checks["noise_weaker_than_attack"] != "SKIP" and checks["undefended_to_zero"] != "SKIP"


def test_minimum_norm_distances_do_not_depend_on_the_memory_format_of_the_images(tmp_path):
    """adv-lib projects through in-place ops on flatten() views, which a channels-last tensor turns into copies:
    the engine hands attacks contiguous images, so FMN finds the same distances either way."""
    grey = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        grey.weight.fill_(1 / 3), grey.bias.zero_()
    model, (x, y) = nn.Sequential(grey, trained_cnn()), eval_set(24)
    colour = x.repeat(1, 3, 1, 1).contiguous()
    suite = load_suite(write_suite(tmp_path, suite_toml(["0"], {"name": "fmn", "kind": "fmn", "norm": "L2", "steps": 30},
                                                        l2_eps=[0.0, 1.0])))
    for name, images in (("plain", colour), ("channels_last", colour.contiguous(memory_format=torch.channels_last))):
        run_sweep(model, images, y, suite, tmp_path / name, SweepConfig(progress=False))
    plain, last = (read_run(tmp_path / name).samples["distances"] for name in ("plain", "channels_last"))
    assert np.array_equal(plain, last)
