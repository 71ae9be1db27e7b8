"""Attack adapters do what their libraries do, minus the known traps; suite files load or fail naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchattacks

from robustjpeg.attacks.adapters import ATTACKS, FGSM, PGD, AutoAttack, Square, UniformNoise
from robustjpeg.attacks.suites import SHIPPED_SUITES, load_suite
from robustjpeg.errors import ConfigError, UnknownName

from sweep_models import eval_set, trained_cnn, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]


def test_shipped_suites_are_the_package_files_and_the_repository_only_links_to_them():
    assert set(SHIPPED_SUITES) == {"quick", "standard", "adaptive", "adaptive-quick", "paper"}
    for name in SHIPPED_SUITES:
        link = REPO / "attacks" / f"{name}.toml"
        assert link.is_symlink() and link.resolve() == (REPO / "robustjpeg" / "suites" / f"{name}.toml").resolve()
        suite = load_suite(name)
        assert suite.name == name and 0.0 in suite.eps


@pytest.mark.parametrize("name, budgets", [("quick", 6), ("standard", 8), ("adaptive", 6), ("adaptive-quick", 6)])
def test_shipped_suites_cover_enough_budgets(name, budgets):
    assert len(load_suite(name).eps) >= budgets


def test_standard_suite_has_the_attacks_the_protocol_needs():
    suite = load_suite("standard")
    kinds = {(a.kind, a.norm) for a in suite.attacks}
    linf = {("fgsm", "Linf"), ("pgd", "Linf"), ("autoattack", "Linf"), ("square", "Linf"), ("fmn", "Linf")}
    l2 = {("apgd", "L2"), ("autoattack", "L2"), ("ddn", "L2")}
    assert linf | l2 <= kinds and len(suite.eps) >= 8
    assert any(a.params.get("targeted") and a.norm == "L2" for a in suite.attacks), "APGD-T in L2"
    assert suite.standard_l2_eps == 0.5 and 0.5 in suite.l2_eps
    pgd = [a for a in suite.attacks if a.name == "pgd"][0]
    assert pgd.params["steps"] >= 20 and pgd.restarts > 1 and max(suite.eps) == pytest.approx(16 / 255)


@pytest.mark.parametrize("name, cascade", [("standard", True), ("adaptive", True), ("quick", False)])
def test_standard_and_adaptive_suites_cascade_by_default(name, cascade):
    assert load_suite(name).cascade is cascade


def test_adaptive_suite_crafts_through_the_straight_through_view():
    suite = load_suite("adaptive")
    assert {a.kind for a in suite.attacks if a.view == "ste"} == {"pgd", "apgd"}
    assert any(a.source == "transfer" for a in suite.attacks) and any(a.kind == "noise" for a in suite.attacks)


@pytest.mark.parametrize("body, line, words", [
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "fgsm"\n[[attacks]]\nname = "b"\nkind = "deepfool"\n', 9, "unknown attack 'deepfool'"),
    ('eps = ["0", "8"]\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 3, "outside [0, 1]"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\n', 4, "missing required field 'kind'"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nstep = 3\n', 7, "no parameter 'step'"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nsteps = "ten"\n', 7, "steps must be int"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "ddn"\nrestarts = 3\n', 7, "minimum-norm attack that runs once"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nrestarts = "two"\n', 7, "restarts must be a whole number"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nsteps = 0\n', 7, "steps must be >= 1"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nrel_stepsize = -1.0\n', 7, "rel_stepsize must be > 0"),
    ('eps = ["0"]\nsteps = 3\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 4, "unknown field 'steps'"),
    ('eps = ["0", "0.1"]\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 2, "standard_eps '0.3' is not in the eps grid"),
    ('eps = ["0"]\nnorm = "L1"\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 4, "unknown norm 'L1'"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "pgd"\nnorm = "L1"\n', 7, "unknown norm 'L1'; known: Linf, L2"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "ddn"\nnorm = "Linf"\n', 7, "DDN measures L2 only, not Linf"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "fgsm"\nnorm = "L2"\n', 7, "FGSM measures Linf only"),
    ('eps = ["0"]\nl2_eps = [0.0, -0.5]\nstandard_l2_eps = 0.0\n[[attacks]]\nname = "a"\nkind = "ddn"\n', 4,
     "budget -0.5 lies outside [0, inf]"),
    ('eps = ["0"]\nl2_eps = [0.0, "half"]\nstandard_l2_eps = 0.0\n[[attacks]]\nname = "a"\nkind = "ddn"\n', 4,
     "budget 'half' is not a number"),
    ('eps = ["0"]\n[[attacks]]\nname = "a"\nkind = "ddn"\n', 1, "l2_eps needs a budget > 0"),
    ('eps = ["0"]\nl2_eps = [0.0, 0.5]\nstandard_l2_eps = 1.0\n[[attacks]]\nname = "a"\nkind = "ddn"\n', 5,
     "standard_l2_eps 1.0 is not in the l2_eps grid"),
    ('eps = ["0"]\nl2_eps = [0.0, 0.5]\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 4, "no attack has norm = \"L2\""),
    ('eps = ["0", "0.3"]\ncascade = "yes"\n[[attacks]]\nname = "a"\nkind = "fgsm"\n', 4, "cascade must be true or false"),
])
def test_bad_suite_error_names_line_and_problem(tmp_path, body, line, words):
    path = write_suite(tmp_path, 'name = "t"\nstandard_eps = "0.3"\n' + body)
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert f"line {line}" in str(err.value) and words in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_suite_name_lists_the_shipped_ones():
    with pytest.raises(UnknownName) as err:
        load_suite("fastest")
    assert all(name in str(err.value) for name in ("quick", "standard", "adaptive", "adaptive-quick", "paper"))


def test_fgsm_from_a_reused_direction_equals_torchattacks_fgsm():
    model, (x, y) = trained_cnn(), eval_set(32)
    direction = FGSM().direction(model, x, y)
    for eps in (1 / 255, 8 / 255, 0.3):
        assert torch.equal(FGSM.step(x, direction, eps), torchattacks.FGSM(model, eps=eps)(x, y))


def test_pgd_step_scales_with_budget_so_large_budgets_are_reached():
    """torchattacks' default step (2/255, 10 steps) cannot move past 20/255; the adapter's scaled step can."""
    model, (x, y) = trained_cnn(), eval_set(16)
    adv = PGD(steps=10, random_start=False).perturb(model, x, y, 0.3, seed=0)
    reach = (adv - x).abs().flatten(1).amax(1)
    assert float(reach.max()) > 20 / 255 + 1e-3 and float(reach.max()) <= 0.3 + 1e-6


def test_official_autoattack_is_the_registered_autoattack_and_breaks_an_undefended_model():
    assert ATTACKS.get("autoattack") is AutoAttack
    model, (x, y) = trained_cnn(), eval_set(6)
    adv = AutoAttack().perturb(model, x, y, 0.3, seed=0)
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6
    assert int((model(adv).argmax(1) == y).sum()) == 0


def test_square_is_black_box_and_stays_in_budget():
    model, (x, y) = trained_cnn(), eval_set(8)
    adv = Square(queries=100).perturb(model, x, y, 0.2, seed=0)
    assert Square.black_box and float((adv - x).abs().max()) <= 0.2 + 1e-6 and 0 <= float(adv.min()) <= float(adv.max()) <= 1
    assert int((model(adv).argmax(1) != y).sum()) > int((model(x).argmax(1) != y).sum())


def test_uniform_noise_is_fixed_by_its_seed_and_in_budget():
    _, (x, y) = trained_cnn(), eval_set(8)
    a, b = (UniformNoise().perturb(None, x, y, 0.1, seed=5) for _ in range(2))
    assert torch.equal(a, b) and float((a - x).abs().max()) <= 0.1 + 1e-7
    assert not torch.equal(a, UniformNoise().perturb(None, x, y, 0.1, seed=6))


def test_cascaded_standard_suite_runs_each_autoattack_part_once():
    """Under cascade the official AutoAttack leaves out the parts the suite runs as cells of their own with its
    settings (L2: APGD-CE and APGD-T; Linf: Square); without cascade it runs whole."""
    from robustjpeg.evaluation.cells import autoattack_skip

    suite = load_suite("standard")
    entry = {s.name: s for s in suite.attacks}
    assert autoattack_skip(suite, entry["autoattack-l2"]) == ("apgd-ce", "apgd-t")
    assert autoattack_skip(suite, entry["autoattack"]) == ("square",)
    full = load_suite("standard")
    full.cascade = False
    assert autoattack_skip(full, entry["autoattack"]) == () and autoattack_skip(full, entry["autoattack-l2"]) == ()


def test_autoattack_without_its_gradient_parts_spends_no_backward_pass_and_still_breaks_digits():
    from robustjpeg.evaluation.engine import PassCounter

    model, (x, y) = trained_cnn(), eval_set(8)
    tally = {"forward": 0, "backward": 0}
    adv = AutoAttack().perturb(PassCounter(model, tally), x, y, 0.3, seed=0, skip=("apgd-ce", "apgd-t", "fab-t"))
    assert tally["backward"] == 0 and tally["forward"] > 0, tally
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6
    assert int((model(adv).argmax(1) != y).sum()) > int((model(x).argmax(1) != y).sum())
