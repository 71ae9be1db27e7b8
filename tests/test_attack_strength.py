"""The suites are strong where they are run: undefended models fall to about 0% in every norm, a robust model's
worst case lies between an independent PGD loop and the official AutoAttack, and weak attacks are caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robustjpeg.attacks.suites import SHIPPED_SUITES, load_suite
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep
from robustjpeg.models.info import ModelInfo

from conftest import shared_file
from sweep_models import eval_set, pgd_trained_cnn, suite_toml, trained_cnn, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")
MNIST = {"eps": [0.0, 0.3], "l2": [0.0, 2.0]}  # MNIST's usual standard budgets (Linf 0.3, L2 2.0)
CIFAR_MEAN, CIFAR_STD = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sweep(model, x, y, suite, tmp_path, **info) -> dict:
    return run_sweep(model, x, y, suite, tmp_path / suite.name, SweepConfig(progress=False), model_info=ModelInfo("m", **info))


def _status(results: dict) -> dict[int, dict]:
    return {c["id"]: c for c in results["checks"]}


def _worst(results: dict, norm: str, eps: float) -> float:
    return next(w["accuracy"] for w in results["worst_case"] if w["norm"] == norm and math.isclose(w["eps"], eps, rel_tol=1e-6))


def _at_standard_budgets(name: str, linf: list[float] | None = None, l2: list[float] | None = None):
    """A shipped suite cut to budget 0 and its standard budgets (or the given grids, the last one standard)."""
    suite = load_suite(name)
    linf = linf or [0.0, suite.standard_eps]
    l2 = l2 or ([0.0, suite.standard_l2_eps] if suite.l2_eps else None)
    return suite.with_eps(linf, linf[-1]).with_l2(l2, l2[-1] if l2 else None)


def _assert_undefended_falls(results: dict, suite) -> None:
    checks = _status(results)
    assert checks[13]["status"] == "PASS", checks[13]
    for norm in ("Linf", "L2"):
        eps = suite.standard(norm)
        if eps is not None:
            assert _worst(results, norm, eps) <= 0.05, f"{suite.name}: undefended model keeps too much at {norm} {eps}"
    expected = "PASS" if any(a.adapter.minimum_norm for a in suite.attacks) else "SKIP"
    for i in (17, 18):
        assert checks[i]["status"] == expected, checks[i]


@pytest.mark.parametrize("name", SHIPPED_SUITES)
def test_every_shipped_suite_drives_an_undefended_digit_model_to_zero_in_every_norm(name, tmp_path):
    suite = _at_standard_budgets(name, MNIST["eps"], MNIST["l2"])
    x, y = eval_set(40)
    _assert_undefended_falls(_sweep(trained_cnn(), x, y, suite, tmp_path), suite)


@pytest.fixture(scope="module")
def resnet20_and_images(resnet20_checkpoint, cifar_jpeg_test_set):
    from robustjpeg.models.loading import load_model

    model, _ = load_model(resnet20_checkpoint, arch="resnet20", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pixels, labels, _ = cifar_jpeg_test_set
    pick = torch.arange(0, len(labels), len(labels) // 16)[:16]  # the test set is sorted by class: every 625th
    return model.eval(), pixels[pick].float() / 255, labels[pick]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED_SUITES)
def test_every_shipped_suite_drives_the_undefended_resnet20_to_zero_at_its_own_standard_budgets(
        name, resnet20_and_images, tmp_path):
    model, x, y = resnet20_and_images
    suite = _at_standard_budgets(name)
    _assert_undefended_falls(_sweep(model, x, y, suite, tmp_path), suite)


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int = 50,
              restarts: int = 2, seed: int = 0) -> torch.Tensor:
    """An independent reference, written here: PGD with random starts on the cross-entropy, step eps/4 (Linf: sign
    of the gradient; L2: the normalised gradient), projected onto the ball and [0, 1]; a sample counts as broken if
    any iterate of any restart is misclassified. Returns which samples stay correct."""
    gen = torch.Generator().manual_seed(seed)
    robust = model(x).argmax(1) == y

    def project(delta: torch.Tensor) -> torch.Tensor:
        if norm == "Linf":
            return delta.clamp(-eps, eps)
        size = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta * (eps / size).clamp(max=1.0)

    for _ in range(restarts):
        delta = project((torch.rand(x.shape, generator=gen) * 2 - 1) * eps)
        for _ in range(steps):
            delta.requires_grad_(True)
            adv = (x + delta).clamp(0, 1)
            logits = model(adv)
            robust &= logits.argmax(1) == y
            grad, = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), delta)
            step = grad.sign() if norm == "Linf" else grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = project((x + delta.detach() + eps / 4 * step).clamp(0, 1) - x)
        with torch.no_grad():
            robust &= model((x + delta).clamp(0, 1)).argmax(1) == y
    return robust


def official_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The official AutoAttack (pyautoattack, standard version), run directly; returns which samples stay correct."""
    from pyautoattack import AutoAttack

    attack = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=0, device="cpu")
    attack.verbose = False
    adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(y))
    with torch.no_grad():
        return model(adv).argmax(1) == y


def _robust_worst(folder, norm: str, eps: float) -> np.ndarray:
    with np.load(folder / "samples.npz") as data:
        keys = [str(k) for k in data["worst_keys"]]
        return data["worst"][keys.index(next(k for k in keys if k.startswith(f"{norm}|") and
                                             math.isclose(float(k.split("|")[1]), eps, rel_tol=1e-6)))]


def _assert_between_pgd_and_autoattack(model, x, y, suite, tmp_path) -> None:
    """Sample for sample: the suite breaks every sample the plain PGD loop breaks, and almost none that the official
    AutoAttack cannot break (tolerance: 2 samples or 3% of n, for the randomness of restarts)."""
    _sweep(model, x, y, suite, tmp_path, defended=True)
    tol = max(2, int(0.03 * len(y)))
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.5
    for norm in ("Linf", "L2"):
        eps = suite.standard(norm)
        ours = torch.from_numpy(_robust_worst(tmp_path / suite.name, norm, eps))
        pgd, aa = plain_pgd(model, x, y, eps, norm), official_autoattack(model, x, y, eps, norm)
        assert 0.2 < float(aa.float().mean()), f"{norm} {eps}: the model should be robust on a good share here"
        missed = int((ours & ~pgd).sum())
        assert missed <= tol, f"{norm} {eps}: the suite calls {missed} samples robust that a plain PGD loop breaks"
        beyond = int((~ours & aa).sum())
        assert beyond <= tol, f"{norm} {eps}: the suite breaks {beyond} samples the official AutoAttack cannot"


@pytest.mark.slow
def test_quick_suite_on_a_pgd_trained_digit_model_lies_between_plain_pgd_and_official_autoattack(tmp_path):
    x, y = eval_set(64)
    suite = _at_standard_budgets("quick", [0.0, 0.1], [0.0, 1.0])
    _assert_between_pgd_and_autoattack(pgd_trained_cnn(), x, y, suite, tmp_path)


@pytest.mark.slow
def test_standard_suite_on_a_pgd_trained_digit_model_lies_between_plain_pgd_and_official_autoattack(tmp_path):
    x, y = eval_set(32)
    suite = _at_standard_budgets("standard", [0.0, 0.1], [0.0, 1.0])
    _assert_between_pgd_and_autoattack(pgd_trained_cnn(), x, y, suite, tmp_path)


@pytest.mark.slow
def test_standard_suite_on_an_adversarially_trained_cifar_cnn_lies_between_plain_pgd_and_autoattack(
        cifar_jpeg_test_set, tmp_path):
    from robustjpeg.models.loading import load_model

    model, _ = load_model(shared_file("models/robust/cifar_cnn_a_adv.pt"), arch="cnn_a", mean=CIFAR_MEAN, std=CIFAR_STD)
    model.eval()
    pixels, labels, _ = cifar_jpeg_test_set
    pick = torch.arange(0, len(labels), len(labels) // 32)[:32]
    suite = _at_standard_budgets("standard", [0.0, 2 / 255], [0.0, 0.25])
    _assert_between_pgd_and_autoattack(model, pixels[pick].float() / 255, labels[pick], suite, tmp_path)


WEAK_CW = {"name": "cw", "kind": "cw", "c": 0.01, "steps": 10, "lr": 0.01, "search_steps": 1}
PGD_L2 = {"name": "pgd-l2", "kind": "pgd", "norm": "L2", "steps": 20}
DDN = {"name": "ddn", "kind": "ddn", "steps": 50}


@pytest.mark.parametrize("cascade", [False, True])
def test_a_weak_minimum_norm_attack_fails_the_agreement_check_and_is_named_by_the_optimality_check(cascade, tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_toml(["0"], {"name": "fgsm", "kind": "fgsm"}, PGD_L2, WEAK_CW,
                                                        l2_eps=[0.0, 1.0, 2.0, 3.0], cascade=cascade)))
    checks = _status(_sweep(trained_cnn(), *eval_set(40), suite, tmp_path))
    assert checks[18]["status"] == "FAIL" and "minimum-norm too weak" in checks[18]["detail"], checks[18]
    assert checks[17]["status"] == "WARN" and "far from the best: cw" in checks[17]["detail"], checks[17]


@pytest.mark.parametrize("cascade", [False, True])
def test_a_weak_fixed_budget_attack_fails_the_agreement_check_the_other_way(cascade, tmp_path):
    """Under cascade DDN runs first and the weak PGD never sees what DDN broke: check 18 probes those samples."""
    weak = {**PGD_L2, "steps": 1, "rel_stepsize": 0.05, "random_start": False}
    suite = load_suite(write_suite(tmp_path, suite_toml(["0"], {"name": "fgsm", "kind": "fgsm"}, weak, DDN,
                                                        l2_eps=[0.0, 1.0, 2.0, 3.0], cascade=cascade)))
    checks = _status(_sweep(trained_cnn(), *eval_set(40), suite, tmp_path))
    share = checks[18]["value"]
    assert checks[18]["status"] == "FAIL" and share > 0.03, checks[18]
    assert checks[17]["status"] == "PASS", "DDN is the best attack here, so its optimality is 1"


def test_torchattacks_style_cw_with_fixed_c_is_flagged_on_the_cifar_resnet20(resnet20_and_images, tmp_path):
    """The shipped settings of old (c = 10, lr = 0.1, no search) measured L2 distances 20x too large on CIFAR."""
    model, x, y = resnet20_and_images
    cw = {"name": "cw", "kind": "cw", "c": 10.0, "lr": 0.1, "steps": 100, "search_steps": 1}
    suite = load_suite(write_suite(tmp_path, suite_toml(["0"], {"name": "fgsm", "kind": "fgsm"}, PGD_L2, cw,
                                                        l2_eps=[0.0, 0.1, 0.25, 0.5])))
    checks = _status(_sweep(model, x, y, suite, tmp_path))
    assert checks[18]["status"] == "FAIL" and "minimum-norm too weak" in checks[18]["detail"], checks[18]
    assert checks[17]["status"] == "WARN" and "far from the best: cw" in checks[17]["detail"], checks[17]
