"""report.md, its figures and the RobustBench-style JSON agree with the result files they are drawn from."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from robustjpeg.cli import EXIT_OK, EXIT_USAGE, main
from robustjpeg.errors import RunFolderError
from robustjpeg.evaluation.verdict import MASKING_CHECKS
from robustjpeg.report.markdown import combined_worst_case, write_report
from robustjpeg.report.runs import load_run, load_runs
from robustjpeg.utils.formatting import budget

from runfolders import ATTACKS, assert_real_png, make_run, markdown_tables, parse_accuracy

# FGSM stronger than PGD: the shape of masked gradients, which check 6 must flag
MASKED = [("fgsm", "fgsm", "Linf", 1.0), ("pgd", "pgd", "Linf", 1.6), ("aa", "autoattack", "Linf", 1.2),
          ("ddn", "ddn", "L2", 1.0)]

TINY_SUITE = """
name = "tiny"
description = "three budgets and short attacks: enough for a report test, not a robustness claim"
norm = "Linf"
eps = ["0", "0.1", "0.3"]
standard_eps = "0.3"
l2_eps = [0.0, 1.0, 2.0, 3.0]
standard_l2_eps = 2.0
attacks = [{name = "fgsm", kind = "fgsm"},
           {name = "pgd", kind = "pgd", steps = 5, rel_stepsize = 2.5, random_start = true},
           {name = "ddn", kind = "ddn", steps = 20}]
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    runs = [make_run(base / "baseline", "resnet20", scale=1.5 / 255, clean_rate=0.82),
            make_run(base / "masked", "resnet20-masked", scale=3 / 255, clean_rate=0.78, attacks=MASKED)]
    path = write_report(runs, base / "report")
    results = {json.loads((r / "results.json").read_text())["model"]: json.loads((r / "results.json").read_text())
               for r in runs}
    return path, results


def _budget(label: str) -> tuple[str, float]:
    """'Linf 8/255' -> ('Linf', 8/255), read independently of the report's formatter."""
    norm, value = label.rsplit(" ", 1)
    top, _, bottom = value.partition("/")
    return norm.split()[-1], float(top) / float(bottom or 1)


def _close(shown: tuple, record: dict) -> None:
    expected = [100 * record["accuracy"], 100 * record["ci95"][0], 100 * record["ci95"][1]]
    assert shown == pytest.approx(expected, abs=0.05 + 1e-9), f"report shows {shown}, results.json has {expected}"


def _model_columns(header: list[str]) -> dict[int, str]:
    return {i: re.sub(r" \(n=\d+\)$", "", h) for i, h in enumerate(header) if i > 0}


def _summary_matches(path, results: dict) -> None:
    summary = next(t for t in markdown_tables(path.read_text()) if t[0] == "Summary")
    assert {row[0] for row in summary[2]} == set(results)
    for row in summary[2]:
        res = results[row[0]]
        assert int(row[2]) == res["n"]
        _close(parse_accuracy(row[3]), res["clean"])
        norm, eps = _budget(row[4])
        worst = next(w for w in res["worst_case"] if w["norm"] == norm and np.isclose(w["eps"], eps))
        _close(parse_accuracy(row[5]), worst)


def _grids_match(path, results: dict) -> None:
    seen = set()
    for heading, header, rows in markdown_tables(path.read_text()):
        if header[0] != "budget":
            continue
        attack = None if heading.startswith("Robust accuracy by budget") else heading.split()[0]
        for row in rows:
            for col, model in _model_columns(header).items():
                if row[col] == "—":
                    continue
                if row[0] == "clean":
                    _close(parse_accuracy(row[col]), results[model]["clean"])
                    continue
                norm, eps = _budget(row[0])
                records = results[model]["worst_case"] if attack is None else \
                    [c for c in results[model]["cells"] if c["attack"] == attack]
                match = [r for r in records if r["norm"] == norm and np.isclose(r["eps"], eps)]
                assert len(match) == 1, f"{heading}: no result for {row[0]} of {model}"
                _close(parse_accuracy(row[col]), match[0])
                seen.add((model, attack, norm, round(eps, 9)))
    expected = {(m, c["attack"], c["norm"], round(c["eps"], 9)) for m, r in results.items() for c in r["cells"]}
    expected |= {(m, None, w["norm"], round(w["eps"], 9)) for m, r in results.items() for w in r["worst_case"]}
    assert seen == expected, f"cells missing from report.md: {sorted(expected - seen)[:5]}"


def _images_are_real(path) -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())
    assert "accuracy-vs-budget.png" in images and "clean-vs-robust.png" in images
    for name in images:
        assert_real_png(path.parent / name)


def test_summary_table_matches_results_json(report):
    _summary_matches(*report)


def test_budget_and_attack_tables_hold_every_result_cell(report):
    _grids_match(*report)


def test_every_referenced_image_is_a_real_png(report):
    _images_are_real(report[0])


@pytest.fixture(scope="module")
def real_report(request, tmp_path_factory):
    """A trained JPEG-DL model swept as trained (soft quantiser) and with the hard quantiser, whose zero input
    gradients mask every gradient attack: the sanity checks must catch the second one."""
    pytest.importorskip("robustjpeg.evaluation.sweep", reason="the sweep engine writes the real run folders")
    trained = request.getfixturevalue("mnist_jpeg_run")
    from robustjpeg.attacks.suites import load_suite
    from robustjpeg.data.datasets import eval_tensors, load_dataset
    from robustjpeg.evaluation.sweep import SweepConfig, run_sweep
    from robustjpeg.models.checkpoints import load_trained
    from robustjpeg.models.loading import load_model

    from conftest import one_thread

    base = tmp_path_factory.mktemp("real")
    (base / "tiny.toml").write_text(TINY_SUITE)
    x, y, idx = eval_tensors(load_dataset("mnist5k"), 40, seed=0)
    model, spec, _ = load_trained(trained["checkpoint"])
    runs = {"jpeg-soft": None, "jpeg-hard": "hard"}
    with one_thread():
        for name, mode in runs.items():
            info = load_model(trained["checkpoint"], name=name)[1]
            run_sweep(model, x, y, load_suite(base / "tiny.toml"), base / name,
                      SweepConfig(progress=False, indices=idx, dataset="mnist5k", jpeg_mode=mode), model_info=info)
    path = write_report([base / name for name in runs], base / "report")
    return path, {name: json.loads((base / name / "results.json").read_text()) for name in runs}


def test_step_table_counts_moved_and_soft_steps_of_the_trained_layer(real_report, mnist_jpeg_run):
    ckpt = torch.load(mnist_jpeg_run["checkpoint"], weights_only=True)
    now = ckpt["state_dict"]["jpeg.tables"].clamp(1e-5, 255.0).numpy()[:1]  # one grey table
    start = np.asarray(ckpt["jpeg_start_tables"], dtype=float)[:1]
    alpha = ckpt["model_spec"]["jpeg"]["alpha"]
    row = next(line for line in real_report[0].read_text().splitlines() if line.startswith("| jpeg-soft | learned"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    moved = int((np.abs(now - start) > 0.05 * start).sum())
    soft = (int((alpha * start**2 < 20).sum()), int((alpha * now**2 < 20).sum()))
    assert cells[5] == f"{moved} of 64" and cells[6] == f"{soft[0]} -> {soft[1]} of 64", cells
    assert float(cells[4]) == pytest.approx(float(np.abs(now - start).max()), rel=1e-2)


def test_report_of_a_real_sweep_matches_its_results(real_report):
    _summary_matches(*real_report)
    _grids_match(*real_report)
    _images_are_real(real_report[0])
    assert "jpeg-tables-jpeg-soft.png" in real_report[0].read_text()


def test_real_masked_gradients_fail_a_check_and_set_the_verdict(real_report):
    path, _ = real_report
    tables = {t[0].split(":")[0]: t for t in markdown_tables(path.read_text()) if t[1][:3] == ["#", "check", "status"]}
    status = {name: {row[1]: row[2].strip("*") for row in t[2]} for name, t in tables.items()}
    assert status["jpeg-hard"]["gradient_health"] == "FAIL"
    assert status["jpeg-soft"]["gradient_health"] == "PASS"
    for name, checks in status.items():
        failed = {check for check, s in checks.items() if s == "FAIL"}
        expect = "unreliable" if failed - MASKING_CHECKS else ("overstated" if failed else "reliable")
        assert f"{name}: {'' if expect == 'reliable' else '**'}{expect}" in tables[name][0], f"{name}: verdict and table disagree"


def test_check_table_fails_masked_run_and_passes_clean_one(report):
    path, _ = report
    tables = {t[0]: t for t in markdown_tables(path.read_text())}
    clean = tables["resnet20: reliable (15 PASS)"]
    assert {row[2] for row in clean[2]} == {"PASS"}
    masked = next(t for h, t in tables.items() if h.startswith("resnet20-masked"))
    assert "overstated" in masked[0] and "iterative_beats_single_step" in masked[0]
    row6 = next(row for row in masked[2] if row[0] == "6")
    assert row6[2].strip("*") == "FAIL" and float(row6[3]) > 0.01
    summary = tables["Summary"][2]
    assert "overstated" in next(r for r in summary if r[0] == "resnet20-masked")[6]
    assert next(r for r in summary if r[0] == "resnet20")[6].startswith("reliable")


def test_robustbench_json_per_model(report):
    path, results = report
    for model, res in results.items():
        entry = json.loads((path.parent / f"{model}.json").read_text())
        assert float(entry["clean_acc"]) == pytest.approx(100 * res["clean"]["accuracy"], abs=0.005)
        assert entry["eps"] == "8/255" and entry["threat_model"] == "Linf"
        assert entry["unreliable"] == any(c["status"] == "FAIL" for c in res["checks"])
    aa = next(c for c in results["resnet20-masked"]["cells"] if c["kind"] == "autoattack" and c["eps"] == 8 / 255)
    masked = json.loads((path.parent / "resnet20-masked.json").read_text())
    assert float(masked["autoattack_acc"]) == pytest.approx(100 * aa["accuracy"], abs=0.005)
    assert "autoattack_acc" not in json.loads((path.parent / "resnet20.json").read_text())


def test_jpeg_model_gets_table_heat_map(tmp_path):
    pytest.importorskip("robustjpeg.models.jpeg", reason="the JPEG layer module provides the standard tables")
    run = make_run(tmp_path / "jpeg", "resnet20-jpeg", n=60, jpeg=True)
    path = write_report([run], tmp_path / "report")
    images = re.findall(r"!\[[^\]]*\]\((jpeg-tables-[^)]+)\)", path.read_text())
    assert images == ["jpeg-tables-resnet20-jpeg.png"]
    assert_real_png(path.parent / images[0])


@pytest.mark.parametrize("missing", ["run.json", "results.json", "samples.npz"])
def test_broken_run_folder_names_the_missing_file(tmp_path, capsys, missing):
    run = make_run(tmp_path / "run", n=40, attacks=ATTACKS[:2])
    (run / missing).unlink()
    with pytest.raises(RunFolderError, match=re.escape(missing)):
        load_run(run)
    assert main(["report", str(run), "-o", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert missing in err and "Traceback" not in err


def test_partial_and_truncated_runs_are_refused_with_the_fix(tmp_path):
    run = make_run(tmp_path / "run", n=40, attacks=ATTACKS[:2])
    facts = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**facts, "status": "running"}))
    with pytest.raises(RunFolderError, match="--resume"):
        load_run(run)
    (run / "run.json").write_text(json.dumps(facts))
    (run / "results.json").write_text((run / "results.json").read_text()[:200])
    with pytest.raises(RunFolderError, match="results.json is not valid JSON"):
        load_run(run)


def test_results_and_samples_from_different_runs_are_refused(tmp_path):
    run = make_run(tmp_path / "run", n=40, attacks=ATTACKS[:2])
    other = make_run(tmp_path / "other", n=40, attacks=ATTACKS[:2], scale=1 / 255)
    (run / "samples.npz").write_bytes((other / "samples.npz").read_bytes())
    with pytest.raises(RunFolderError, match="different runs"):
        load_run(run)


def test_cli_report_writes_report(tmp_path, capsys):
    run = make_run(tmp_path / "run", n=40, attacks=ATTACKS[:2])
    assert main(["report", str(run), "-o", str(tmp_path / "out")]) == EXIT_OK
    assert (tmp_path / "out" / "report.md").is_file()
    assert main(["report", str(run)]) == EXIT_USAGE
    assert "-o/--out" in capsys.readouterr().err


@pytest.mark.parametrize("norm, eps, text", [("Linf", 8 / 255, "8/255"), ("Linf", 0.5 / 255, "0.5/255"),
                                             ("Linf", 0.3, "0.3"), ("Linf", 0.2, "0.2"), ("Linf", 0.0, "0"),
                                             ("Linf", 0.015686275, "4/255"), ("L2", 0.5, "0.5")])
def test_budgets_read_as_people_write_them(norm, eps, text):
    assert budget(norm, eps) == f"{norm} {text}"


def test_worst_case_over_suites_is_the_per_sample_and_of_one_models_runs(tmp_path):
    first = make_run(tmp_path / "quick", "jpeg-dl", attacks=ATTACKS[:2])
    second = make_run(tmp_path / "adaptive", "jpeg-dl", attacks=ATTACKS[2:3], jitter_seed=1)
    runs = load_runs([first, second])
    combined = combined_worst_case(runs)
    for (norm, eps), rec in combined.items():
        own = [ok for r in runs for (n, e), ok in r.outcomes.worst.items() if n == norm and np.isclose(e, eps)]
        assert rec["robust"] == int(np.logical_and.reduce(own).sum()) and rec["suites"] == len(own)
        for run in runs:
            alone = run.worst_at(norm, eps)
            assert alone is None or rec["accuracy"] <= alone["accuracy"], "combining suites raised an accuracy"
    report = write_report([first, second], tmp_path / "report").read_text()
    assert "## Worst case over every suite" in report and "### jpeg-dl" in report


def test_worst_case_over_suites_of_different_sizes_uses_the_samples_they_share(tmp_path):
    big = make_run(tmp_path / "quick", "jpeg-dl", attacks=ATTACKS[:2], n=300, index_seed=1)
    small = make_run(tmp_path / "adaptive", "jpeg-dl", attacks=ATTACKS[2:3], n=100, jitter_seed=1, index_seed=2)
    runs = load_runs([big, small])
    shared = np.intersect1d(*[r.outcomes.indices for r in runs])
    assert 0 < len(shared) < 100
    combined = combined_worst_case(runs)
    for (norm, eps), rec in combined.items():
        own = [ok[np.isin(r.outcomes.indices, shared)] for r in runs
               for (n, e), ok in r.outcomes.worst.items() if n == norm and np.isclose(e, eps)]
        assert rec["n"] == len(shared) and rec["robust"] == int(np.logical_and.reduce(own).sum())
    report = write_report([big, small], tmp_path / "report").read_text()
    assert f"### jpeg-dl: quick, quick (n = {len(shared)})" in report


def test_a_masking_fail_in_one_suite_marks_the_models_other_runs_overstated(tmp_path):
    masked = make_run(tmp_path / "adaptive", "jpeg-dl", fail={11: ("FAIL", 0.4, "BPDA far stronger")})
    paper = make_run(tmp_path / "paper", "jpeg-dl", sample_seed=1)
    clean_model = make_run(tmp_path / "base", "baseline", sample_seed=2)
    other_fail = make_run(tmp_path / "odd", "odd", sample_seed=3, fail={3: ("FAIL", 0.2, "examples outside budget")})
    path = write_report([masked, paper, clean_model, other_fail], tmp_path / "report")
    report = path.read_text()
    heading, _, rows = markdown_tables(report)[0]
    assert heading == "Summary"
    summary = {row[0]: row[-1] for row in rows}
    assert summary["jpeg-dl (adaptive)"].startswith("**overstated**"), "masking found is not a broken evaluation"
    assert summary["jpeg-dl (paper)"].startswith("**overstated**")
    assert summary["baseline"].startswith("reliable") and summary["odd"].startswith("**unreliable**")
    assert "> **Overstated:** jpeg-dl (adaptive), jpeg-dl (paper)" in report
    cards = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in path.parent.glob("*.json")}
    for label, verdict in summary.items():
        card = cards[label]
        assert verdict.strip("*").startswith(card["verdict"]) and card["unreliable"] == (card["verdict"] != "reliable")
    assert "Verdict: **overstated** (masking found (bpda_not_stronger) but no adaptive attack" in report


def test_models_trained_with_several_seeds_get_a_mean_and_seed_range(tmp_path):
    folders = [make_run(tmp_path / f"s{seed}", f"jpeg-dl-s{seed}", sample_seed=seed) for seed in range(3)]
    folders.append(make_run(tmp_path / "single", "baseline", sample_seed=9))
    report = write_report(folders, tmp_path / "report").read_text()
    heading, header, rows = next(t for t in markdown_tables(report) if t[0] == "Across seeds")
    assert [row[:3] for row in rows] == [["jpeg-dl", "quick", "3"]], "only the seeded model is aggregated"
    runs = load_runs(folders[:3])
    for column, cell in zip(header[3:], rows[0][3:]):
        if column == "clean":
            values = [float(np.load(f / "samples.npz")["clean_correct"].mean()) for f in folders[:3]]
        else:
            eps = next(e for (n, e) in runs[0].outcomes.worst if budget(n, e) == column)
            values = [float(r.outcomes.worst[("Linf", eps)].mean()) for r in runs]
        mean, lo, hi = (float(v) for v in re.findall(r"[\d.]+", cell))
        assert (mean, lo, hi) == tuple(round(100 * v, 1) for v in (np.mean(values), min(values), max(values)))


# --- model identity: two different models never share a label ---------------------------------------------------

FGSM_SUITE = 'name = "fgsm-only"\neps = ["0", "0.3"]\nstandard_eps = "0.3"\n[[attacks]]\nname = "fgsm"\nkind = "fgsm"\n'


@pytest.fixture(scope="module")
def same_file_name(mnist_baseline_run, mnist_jpeg_run, tmp_path_factory):
    """The README's layout: a baseline and a JPEG-DL model, both saved as run/checkpoint.pt, in two folders."""
    import shutil

    root = tmp_path_factory.mktemp("identity")
    (root / "fgsm.toml").write_text(FGSM_SUITE)
    files = []
    for folder, run in (("base", mnist_baseline_run), ("jpeg", mnist_jpeg_run)):
        (root / folder / "run").mkdir(parents=True)
        files.append(shutil.copy(run["checkpoint"], root / folder / "run" / "checkpoint.pt"))
    return root, files


def _swept(root, checkpoint, out: str, *extra: str):
    from conftest import one_thread

    with one_thread():
        code = main(["sweep", str(checkpoint), "--dataset", "mnist5k", "-n", "40", "--suite", str(root / "fgsm.toml"),
                     "-o", str(root / out), "--device", "cpu", *extra])
    assert code in (EXIT_OK, 4)
    return root / out


def test_two_checkpoints_with_the_same_file_name_get_different_labels_and_never_merge(same_file_name):
    from robustjpeg.report.history import append_history, history_section

    root, files = same_file_name
    runs = [_swept(root, f, f"sweep-{i}") for i, f in enumerate(files)]
    labels = [load_run(r).model for r in runs]
    assert labels[0] != labels[1] and all(label.startswith("run-") for label in labels), labels
    text = write_report(runs, root / "report").read_text()
    assert "Worst case over every suite" not in text, "the report combined two different models as one"
    summary = next(rows for heading, _, rows in markdown_tables(text) if heading == "Summary")
    assert [row[0] for row in summary] == labels and not any("overstated" in row[-1] for row in summary)
    for run in runs:
        append_history(run, root / "history")
    assert "runs of 2 model(s)" in history_section(root / "history", root / "trend.png")


def test_a_name_given_twice_to_two_different_models_is_told_apart_by_their_hashes(same_file_name):
    root, files = same_file_name
    runs = [_swept(root, f, f"named-{i}", "--name", "nightly") for i, f in enumerate(files)]
    assert [load_run(r).model for r in runs] == ["nightly", "nightly"]
    labels = [r.label for r in load_runs(runs)]
    hashes = [load_run(r).identity[1][:8] for r in runs]
    assert labels == [f"nightly [{h}]" for h in hashes] and hashes[0] != hashes[1]
    assert "Worst case over every suite" not in write_report(runs, root / "named-report").read_text()


def test_per_attack_section_says_a_cascaded_runs_figures_are_cumulative(tmp_path):
    cascaded, full = make_run(tmp_path / "cascaded", "resnet20"), make_run(tmp_path / "full", "jpeg-dl")
    results = json.loads((cascaded / "results.json").read_text())
    (cascaded / "results.json").write_text(json.dumps({**results, "cascade": True}))
    per_attack = write_report([cascaded, full], tmp_path / "report").read_text().split("## Robust accuracy per attack")[1]
    note = per_attack.split("###")[0]
    assert "Cascade (resnet20)" in note and "after it and every attack above it" in note and "jpeg-dl" not in note
