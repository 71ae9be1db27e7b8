"""Attack adapters: one small class per attack, registered by name, with its capabilities as class attributes.

The suite files that name them are read in attacks.suites; the PGD loop the suite owns is in attacks.pgd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from robustjpeg.attacks.noise import chunk_seed, keyed_rand
from robustjpeg.attacks.pgd import early_exit_pgd
from robustjpeg.errors import MissingDependency
from robustjpeg.utils.registry import Registry

ATTACKS: Registry[type] = Registry("attack")


NORMS = ("Linf", "L2")


@dataclass
class Attack:
    """An adapter: turns (model, x, y, eps) into adversarial examples; the sweep engine owns every loop.

    Capabilities are class attributes, so checks and reports ask the adapter, not its kind string.
    """

    NORMS: ClassVar[tuple[str, ...]] = ("Linf",)  # the norms its budget (or distance) can be measured in
    minimum_norm: ClassVar[bool] = False  # True: runs once without a budget; curves come from each sample's distance
    black_box: ClassVar[bool] = False  # True: queries outputs only (compared against white-box runs in the checks)
    iterative: ClassVar[bool] = False  # a multi-step gradient attack (check 6 compares it with single-step ones)
    single_step: ClassVar[bool] = False  # one gradient step (FGSM)
    official_autoattack: ClassVar[bool] = False  # the official AutoAttack ensemble (the report's AutoAttack column)
    noise_baseline: ClassVar[bool] = False  # random noise, the floor every attack must beat (check 12)
    cheap: ClassVar[bool] = True  # cheap enough to probe at eps = 0 in the checks
    norm: str = "Linf"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float | None, seed: int) -> Tensor:
        raise NotImplementedError

    def strength(self) -> int:
        """Iterations spent per restart, used to order configurations of one kind (check 7): its steps, or 1."""
        return int(getattr(self, "steps", 1))

    def autoattack_part(self) -> str | None:
        """The part of the official AutoAttack (standard version) this configuration is exactly, or None."""
        return None


@ATTACKS.register("fgsm")
@dataclass
class FGSM(Attack):
    """Fast gradient sign method (torchattacks); its direction does not depend on eps, so the engine reuses it."""

    single_step = True

    def direction(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Sign of torchattacks' FGSM gradient (cross-entropy, batch mean), computed exactly as it does."""
        import torchattacks

        attack = torchattacks.FGSM(model, eps=1.0)
        images = x.clone().detach().requires_grad_(True)
        cost = nn.CrossEntropyLoss()(attack.get_logits(images), y)
        return torch.autograd.grad(cost, images)[0].sign()

    @staticmethod
    def step(x: Tensor, direction: Tensor, eps: float) -> Tensor:
        return torch.clamp(x + eps * direction, min=0, max=1).detach()

    def perturb(self, model, x, y, eps, seed):
        return self.step(x, self.direction(model, x, y), eps)


@ATTACKS.register("pgd")
@dataclass
class PGD(Attack):
    """PGD with per-sample early exit (early_exit_pgd, Linf or L2), its step rel_stepsize * eps / steps."""

    NORMS = NORMS
    iterative = True
    steps: int = 10
    rel_stepsize: float = 2.5
    random_start: bool = True

    def perturb(self, model, x, y, eps, seed, judge: Callable[[Tensor], Tensor] | None = None):
        if eps == 0:  # the L2 projection rescales by eps / |delta| = 0 / 0 at a zero budget
            return x.clone()
        return early_exit_pgd(model, x, y, eps, steps=self.steps, alpha=self.rel_stepsize * eps / self.steps,
                              norm=self.norm, random_start=self.random_start, seed=seed, judge=judge)


@ATTACKS.register("apgd")
@dataclass
class APGD(Attack):
    """Auto-PGD from the official AutoAttack code (pyautoattack): cross-entropy or DLR loss, or targeted DLR (APGD-T).

    Run whole on the samples the engine hands it (the survivors): its step size halves at checkpoints set by the
    whole run's length, so stopping a sample early would change the attack; it already skips samples misclassified
    at the start. Its random start is keyed per sample (keyed_start), its only random draw.
    """

    NORMS = NORMS
    iterative = True
    cheap = False  # 100 iterations (900 for APGD-T) per sample: not re-run at eps 0 by check 1
    steps: int = 100
    loss: str = "ce"
    targeted: bool = False  # APGD-T: the targeted DLR loss against the 9 most likely other classes

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        if self.targeted:
            attack = APGDAttack_targeted(model, n_iter=self.steps, norm=self.norm, eps=eps, seed=seed, device=x.device,
                                         n_target_classes=min(9, _classes(model, x) - 1))
        else:
            attack = APGDAttack(model, n_iter=self.steps, norm=self.norm, eps=eps, seed=seed, loss=self.loss,
                                device=x.device)
        keyed_start(attack, seed)
        return attack.perturb(x, y)

    def autoattack_part(self) -> str | None:
        if self.steps != 100:
            return None
        return "apgd-t" if self.targeted else ("apgd-ce" if self.loss == "ce" else None)


def keyed_start(apgd, seed: int) -> None:
    """Make a pyautoattack APGD (or APGD-T) instance start each sample from noise keyed by the seed, the image and
    (APGD-T) its target class, built as APGD builds its start (a test holds it to the library's own formula), instead
    of one draw for the whole batch it is given: under cascade, sharding or another batch size a sample then gets the
    same start (attacks.noise)."""
    run = apgd.attack_single_run

    def single_run(x: Tensor, y: Tensor, x_init: Tensor | None = None):
        if x_init is None:
            t = start_noise(apgd, x, seed)
            x_init = x + apgd.eps * apgd.normalize(2 * t - 1 if apgd.norm == "Linf" else t)
        return run(x, y, x_init=x_init)

    apgd.attack_single_run = single_run


def start_noise(apgd, x: Tensor, seed: int) -> Tensor:
    """The keyed draw keyed_start builds an APGD start from, where APGD itself draws torch.rand (Linf) or torch.randn
    (L2) for the whole batch; APGD-T's draw is keyed by the target class too."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    tags = apgd.y_target if isinstance(apgd, APGDAttack_targeted) else None
    return keyed_rand(x, seed, "apgd-start", normal=apgd.norm != "Linf", tags=tags)


def _classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@ATTACKS.register("autoattack")
@dataclass
class AutoAttack(Attack):
    """The official AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; pyautoattack), Linf or L2.

    Left whole on the survivors it is given: it is itself a cascade (each part on what the earlier ones failed on).
    skip: parts it leaves out because the suite runs them, with its settings, as cells of their own (cascade).
    Its APGD parts start from per-sample keyed noise (keyed_start) and FAB-T (one restart) draws nothing, so only its
    Square, which draws per batch, depends on which samples share a batch.
    """

    NORMS = NORMS
    iterative = True
    official_autoattack = True
    cheap = False

    def perturb(self, model, x, y, eps, seed, skip: tuple[str, ...] = ()):
        from pyautoattack import AutoAttack as Official

        attack = Official(model, eps=eps, norm=self.norm, version="standard", seed=chunk_seed(x, seed), device=x.device)
        keyed_start(attack.apgd, seed)
        keyed_start(attack.apgd_targeted, seed)
        attack.attacks_to_run = [part for part in attack.attacks_to_run if part not in skip]
        if not attack.attacks_to_run:
            return x.clone()
        attack.verbose = False
        adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
        return adv

    def strength(self) -> int:
        return 100


@ATTACKS.register("square")
@dataclass
class Square(Attack):
    """Square attack (pyautoattack): score-based black box, margin loss, Linf or L2.

    Left whole: it already stops querying a sample once it is misclassified. rescale_schedule: the step schedule is
    stretched to the query count (pyautoattack's default); AutoAttack's own Square has it off. Its draws are per batch
    (window positions shared by the batch, interleaved with per-sample signs), so they cannot be keyed per sample from
    outside: a sample's Square run depends on its batch mates.
    """

    NORMS = NORMS
    black_box = True
    cheap = False
    queries: int = 1000
    p_init: float = 0.8
    rescale_schedule: bool = True

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack.square import SquareAttack

        attack = SquareAttack(model, norm=self.norm, n_queries=self.queries, eps=eps, p_init=self.p_init,
                              seed=chunk_seed(x, seed), device=x.device, resc_schedule=self.rescale_schedule)
        return attack.perturb(x, y)

    def strength(self) -> int:
        return self.queries

    def autoattack_part(self) -> str | None:
        return "square" if (self.queries, self.p_init, self.rescale_schedule) == (5000, 0.8, False) else None


@ATTACKS.register("noise")
@dataclass
class UniformNoise(Attack):
    """Uniform noise in the Linf ball: the baseline an attack must beat by far (check 12)."""

    black_box = True
    noise_baseline = True

    def perturb(self, model, x, y, eps, seed):
        return torch.clamp(x + eps * (2 * keyed_rand(x, seed, "noise") - 1), 0, 1)


def adv_lib_attacks():
    """adv-lib's attacks module. adv-lib imports visdom at import time, only for live plots we never ask for; visdom
    0.2.4 is an sdist whose build fails under setuptools >= 81, so adv-lib is installed with --no-deps and a
    placeholder stands in for visdom when it is absent."""
    import importlib.util
    import sys
    import types

    if "visdom" not in sys.modules and importlib.util.find_spec("visdom") is None:
        sys.modules["visdom"] = types.ModuleType("visdom", "placeholder: adv-lib's live plots are not used")
    try:
        import adv_lib.attacks
    except ImportError as exc:
        raise MissingDependency("minimum-norm attacks need adv-lib: python -m pip install --no-deps adv-lib==0.2.8"
                                ) from exc
    return adv_lib.attacks


class MinimumNorm(Attack):
    """A minimum-norm attack: the smallest perturbation it finds per sample; robust at eps iff that exceeds eps.

    Run whole, once per clean-correct sample: its later steps shrink a perturbation that already fools the model.
    """

    minimum_norm = True
    iterative = True


@ATTACKS.register("fmn")
@dataclass
class FMN(MinimumNorm):
    """Fast Minimum-Norm attack (adv-lib; Pintor et al. 2021), Linf or L2."""

    NORMS = NORMS
    steps: int = 100

    def perturb(self, model, x, y, eps, seed):
        norm = float("inf") if self.norm == "Linf" else 2.0
        return adv_lib_attacks().fmn(model, x, y, norm=norm, steps=self.steps)


@ATTACKS.register("ddn")
@dataclass
class DDN(MinimumNorm):
    """Decoupled Direction and Norm attack (adv-lib; Rony et al. 2019), L2, without quantising the result."""

    NORMS = ("L2",)
    norm: str = "L2"
    steps: int = 100

    def perturb(self, model, x, y, eps, seed):
        return adv_lib_attacks().ddn(model, x, y, steps=self.steps, levels=None)


@ATTACKS.register("alma")
@dataclass
class ALMA(MinimumNorm):
    """Augmented Lagrangian attack (adv-lib; Rony et al. 2021), L2."""

    NORMS = ("L2",)
    norm: str = "L2"
    steps: int = 500

    def perturb(self, model, x, y, eps, seed):
        return adv_lib_attacks().alma(model, x, y, distance="l2", num_steps=self.steps)


@ATTACKS.register("cw")
@dataclass
class CW(MinimumNorm):
    """Carlini-Wagner L2 (adv-lib) with a binary search over c: a labelled extra beside FMN and DDN."""

    NORMS = ("L2",)
    norm: str = "L2"
    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.01
    search_steps: int = 9  # binary-search rounds over c; 1 keeps c fixed (a weak attack, for tests of the checks)

    def perturb(self, model, x, y, eps, seed):
        return adv_lib_attacks().carlini_wagner_l2(model, x, y, confidence=self.kappa, learning_rate=self.lr,
                                                   initial_const=self.c, binary_search_steps=self.search_steps,
                                                   max_iterations=self.steps)

    def strength(self) -> int:
        return self.steps * self.search_steps


