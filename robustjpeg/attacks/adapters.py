"""Attack adapters (one small class each, looked up by name) and attack suites read from TOML files."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import tomllib
import torch
from torch import Tensor, nn

from robustjpeg.attacks.budgets import parse_fraction
from robustjpeg.errors import ConfigError, MissingDependency, UnknownName
from robustjpeg.utils.registry import Registry

ATTACKS: Registry[type] = Registry("attack")
SUITES = resources.files("robustjpeg") / "suites"  # the shipped suite files, inside the installed package
SHIPPED_SUITES = tuple(sorted(f.name.removesuffix(".toml") for f in SUITES.iterdir() if f.name.endswith(".toml")))
VIEWS = ("soft", "hard", "ste")
SUITE_KEYS = ("name", "description", "norm", "eps", "standard_eps", "l2_eps", "standard_l2_eps", "cascade", "attacks")
LOSSES = ("ce", "dlr")
NON_NEGATIVE = ("kappa",)  # float parameters that may be 0; every other float must be > 0
SOURCES = ("model", "transfer")


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
                              norm=self.norm, random_start=self.random_start, judge=judge)


def early_exit_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int, alpha: float,
                   norm: str = "Linf", random_start: bool = True,
                   judge: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """PGD returning, per sample, its first misclassified iterate inside the budget (else the last one).

    Not torchattacks' PGD/PGDL2: those judge only the last iterate and keep every sample in the batch for every step.
    Here a sample counts as broken as soon as any iterate is misclassified, and then leaves the batch. The start
    (drawn from the global RNG exactly as torchattacks draws it), step rule, projection and clamp to [0, 1] are
    torchattacks', so from the same seed the iterates are theirs until a sample leaves: it breaks every sample their
    PGD breaks, for at most their passes. judge: the evaluated model's labels for an iterate, where gradients come
    from another view or model (BPDA, transfer); None = the argmax of the forward that gives the gradient.
    """
    adv = _pgd_start(x, eps, norm) if random_start else x.clone()
    out, alive = adv.clone(), torch.arange(len(x), device=x.device)
    for _ in range(steps):
        current = adv[alive].requires_grad_(True)
        logits = model(current)
        labels = logits.argmax(1) if judge is None else judge(current.detach())
        broken = labels != y[alive]
        out[alive[broken]] = current.detach()[broken]
        keep = ~broken
        if not bool(keep.any()):
            return out
        loss = nn.functional.cross_entropy(logits[keep], y[alive[keep]], reduction="sum")
        grad = torch.autograd.grad(loss, current)[0][keep]
        alive = alive[keep]
        adv[alive] = _pgd_step(x[alive], current.detach()[keep], grad, eps, alpha, norm)
    out[alive] = adv[alive]
    return out


def _pgd_start(x: Tensor, eps: float, norm: str) -> Tensor:
    """torchattacks' random start: uniform in the Linf ball, or a normal direction at a uniform radius in L2."""
    if norm == "Linf":
        return torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), min=0, max=1)
    delta = torch.empty_like(x).normal_()
    n = delta.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    r = torch.zeros_like(n).uniform_(0, 1)
    return torch.clamp(x + delta * (r / n * eps), min=0, max=1)


def _pgd_step(x: Tensor, adv: Tensor, grad: Tensor, eps: float, alpha: float, norm: str) -> Tensor:
    """One torchattacks step: signed (Linf) or normalised (L2) gradient ascent, projection onto the ball, clamp."""
    if norm == "Linf":
        delta = torch.clamp(adv + alpha * grad.sign() - x, min=-eps, max=eps)
    else:
        grad = grad / (grad.flatten(1).norm(p=2, dim=1) + 1e-10).view(-1, 1, 1, 1)
        delta = adv + alpha * grad - x
        size = delta.flatten(1).norm(p=2, dim=1)
        delta = delta * torch.min(eps / size, torch.ones_like(size)).view(-1, 1, 1, 1)
    return torch.clamp(x + delta, min=0, max=1)


@ATTACKS.register("apgd")
@dataclass
class APGD(Attack):
    """Auto-PGD from the official AutoAttack code (pyautoattack): cross-entropy or DLR loss, or targeted DLR (APGD-T).

    Run whole on the samples the engine hands it (the survivors): its step size halves at checkpoints set by the
    whole run's length, so stopping a sample early would change the attack; it already skips samples misclassified
    at the start.
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
        return attack.perturb(x, y)

    def autoattack_part(self) -> str | None:
        if self.steps != 100:
            return None
        return "apgd-t" if self.targeted else ("apgd-ce" if self.loss == "ce" else None)


def _classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@ATTACKS.register("autoattack")
@dataclass
class AutoAttack(Attack):
    """The official AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; pyautoattack), Linf or L2.

    Left whole on the survivors it is given: it is itself a cascade (each part on what the earlier ones failed on).
    skip: parts it leaves out because the suite runs them, with its settings, as cells of their own (cascade).
    """

    NORMS = NORMS
    iterative = True
    official_autoattack = True
    cheap = False

    def perturb(self, model, x, y, eps, seed, skip: tuple[str, ...] = ()):
        from pyautoattack import AutoAttack as Official

        attack = Official(model, eps=eps, norm=self.norm, version="standard", seed=seed, device=x.device)
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
    stretched to the query count (pyautoattack's default); AutoAttack's own Square has it off.
    """

    NORMS = NORMS
    black_box = True
    cheap = False
    queries: int = 1000
    p_init: float = 0.8
    rescale_schedule: bool = True

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack.square import SquareAttack

        attack = SquareAttack(model, norm=self.norm, n_queries=self.queries, eps=eps, p_init=self.p_init, seed=seed,
                              device=x.device, resc_schedule=self.rescale_schedule)
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
        gen = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return torch.clamp(x + eps * noise, 0, 1)


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


@dataclass
class AttackSpec:
    """One [[attacks]] entry of a suite: cell name, adapter kind, its parameters and how it is run."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    restarts: int = 1
    view: str | None = None  # JPEG mode the examples are crafted under ("ste" = BPDA); evaluation is unchanged
    source: str = "model"  # "transfer": crafted on the transfer source model, evaluated on the model

    def build(self) -> Attack:
        return ATTACKS.create(self.kind, **self.params)

    @property
    def adapter(self) -> type:
        """The adapter class, whose class attributes say what the attack is (minimum_norm, iterative, ...)."""
        return ATTACKS.get(self.kind)

    @property
    def norm(self) -> str:
        """The norm its budget is measured in: its `norm` parameter, else its adapter's default."""
        return self.params.get("norm", self.adapter.__dataclass_fields__["norm"].default)

    @property
    def black_box(self) -> bool:
        return self.source == "transfer" or self.adapter.black_box

    @property
    def plain(self) -> bool:
        """A white-box attack on the model itself through its own gradients (no JPEG view, no transfer)."""
        return self.view is None and self.source == "model" and not self.black_box

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Suite:
    """A named attack suite: the Linf and L2 budget grids, their standard budgets, and the attacks."""

    name: str
    norm: str
    eps: list[float]
    standard_eps: float
    attacks: list[AttackSpec]
    l2_eps: list[float] = field(default_factory=list)
    description: str = ""
    standard_l2_eps: float | None = None  # the L2 budget check 13 looks at (0.5 for CIFAR-size images)
    cascade: bool = False  # each fixed-budget attack only on what every earlier one of its norm failed on, per budget

    def __post_init__(self) -> None:
        self.eps, self.l2_eps = sorted(set(map(float, self.eps))), sorted(set(map(float, self.l2_eps)))

    def grid(self, norm: str) -> list[float]:
        """The budget grid of one norm."""
        return self.eps if norm == "Linf" else self.l2_eps

    def standard(self, norm: str) -> float | None:
        """The standard budget of one norm (None when the suite names none)."""
        return self.standard_eps if norm == "Linf" else self.standard_l2_eps

    def with_eps(self, eps: list[float] | None, standard_eps: float | None = None) -> Suite:
        """The same suite over another Linf grid (the CLI's --eps) and, optionally, another standard budget."""
        return dataclasses.replace(self, eps=self.eps if eps is None else eps,
                                   standard_eps=self.standard_eps if standard_eps is None else standard_eps)

    def with_l2(self, l2_eps: list[float] | None, standard_l2_eps: float | None = None) -> Suite:
        """The same suite over another L2 grid and standard L2 budget; a suite without L2 attacks stays as it is."""
        if not self.l2_eps:
            return self
        return dataclasses.replace(self, l2_eps=self.l2_eps if l2_eps is None else sorted(set(l2_eps)),
                                   standard_l2_eps=self.standard_l2_eps if standard_l2_eps is None else standard_l2_eps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Suite:
        attacks = [AttackSpec(**a) for a in d["attacks"]]
        return cls(**{**d, "attacks": attacks})


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file: a path, or the name of a suite shipped in the package."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist; pass a TOML file or one of {', '.join(SHIPPED_SUITES)}")
        return path
    if str(name_or_path) in SHIPPED_SUITES:
        return Path(str(SUITES / f"{name_or_path}.toml"))
    raise UnknownName(f"unknown suite {str(name_or_path)!r}; shipped: {', '.join(SHIPPED_SUITES)}, or pass a .toml file")


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and validate a suite file; every mistake names the file, line and field."""
    path = suite_path(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return _SuiteReader(path, text).suite(data)


class _SuiteReader:
    """Validates parsed TOML and points errors at the line of the offending field."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()
        self.tables = [i for i, line in enumerate(self.lines) if re.match(r"\s*\[\[\s*attacks\s*\]\]", line)]

    def where(self, key: str, table: int | None = None) -> str:
        start = 0 if table is None else self.tables[table]
        stop = (self.tables[0] if self.tables else len(self.lines)) if table is None else (
            self.tables[table + 1] if table + 1 < len(self.tables) else len(self.lines))
        for i in range(start, stop):
            if re.match(rf"\s*{re.escape(key)}\s*=", self.lines[i]):
                return f"{self.path}, line {i + 1}"
        return f"{self.path}, line {start + 1}"

    def fail(self, key: str, message: str, table: int | None = None) -> ConfigError:
        return ConfigError(f"{self.where(key, table)} ({key}): {message}")

    def budget(self, value: Any, key: str, upper: float = 1.0) -> float:
        try:
            eps = parse_fraction(value)
        except ConfigError as exc:
            raise self.fail(key, f"budget {value!r} is not a number or fraction such as 8/255") from exc
        if not math.isfinite(eps) or not 0.0 <= eps <= upper:
            hint = "write 8/255, not 8" if upper == 1.0 else "L2 budgets are distances >= 0"
            raise self.fail(key, f"budget {value!r} lies outside [0, {upper:g}]; {hint}")
        return eps

    def grid(self, data: dict, key: str, upper: float) -> list[float]:
        values = data.get(key, [])
        if not isinstance(values, list):
            raise self.fail(key, f"{key} must be a list of budgets, got {values!r}")
        return sorted({self.budget(v, key, upper) for v in values})

    def standard(self, data: dict, key: str, grid: list[float], grid_key: str, upper: float) -> float:
        eps = self.budget(self.required(data, key), key, upper)
        if eps not in grid:
            raise self.fail(key, f"{key} {data[key]!r} is not in the {grid_key} grid; add it there or pick one of it")
        return eps

    def required(self, data: dict, key: str, table: int | None = None) -> Any:
        if key not in data:
            raise self.fail(key, f"missing required field {key!r}", table)
        return data[key]

    def suite(self, data: dict) -> Suite:
        unknown = [k for k in data if k not in SUITE_KEYS]
        if unknown:
            raise self.fail(unknown[0], f"unknown field {unknown[0]!r}; a suite takes {', '.join(SUITE_KEYS)}")
        eps = self.grid(data, "eps", 1.0)
        if not eps:
            raise self.fail("eps", "needs at least one budget")
        norm = data.get("norm", "Linf")
        if norm not in NORMS:
            raise self.fail("norm", f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
        raw = self.required(data, "attacks")
        if not raw:
            raise self.fail("attacks", "a suite needs at least one [[attacks]] entry")
        attacks = [self.attack(entry, i) for i, entry in enumerate(raw)]
        names = [a.name for a in attacks]
        if len(set(names)) != len(names):
            raise self.fail("name", f"attack names must be unique, got {names}")
        l2, l2_standard = self.l2(data, attacks)
        return Suite(name=str(self.required(data, "name")), norm=norm, eps=eps,
                     standard_eps=self.standard(data, "standard_eps", eps, "eps", 1.0), attacks=attacks, l2_eps=l2,
                     description=str(data.get("description", "")), standard_l2_eps=l2_standard,
                     cascade=self.cascade(data))

    def cascade(self, data: dict) -> bool:
        value = data.get("cascade", False)
        if not isinstance(value, bool):
            raise self.fail("cascade", f"cascade must be true or false, got {value!r}")
        return value

    def l2(self, data: dict, attacks: list[AttackSpec]) -> tuple[list[float], float | None]:
        """The L2 grid and standard budget: required with an L2 attack, refused without one."""
        grid = self.grid(data, "l2_eps", math.inf)
        l2_attacks = [a.name for a in attacks if a.norm == "L2"]
        if not l2_attacks:
            for key in ("l2_eps", "standard_l2_eps"):
                if key in data:
                    raise self.fail(key, f"{key} is set but no attack has norm = \"L2\"; remove it or add an L2 attack")
            return [], None
        if not any(e > 0 for e in grid):
            raise self.fail("l2_eps", f"attacks {', '.join(l2_attacks)} measure L2, so l2_eps needs a budget > 0")
        return grid, self.standard(data, "standard_l2_eps", grid, "l2_eps", math.inf)

    def attack(self, entry: dict, i: int) -> AttackSpec:
        entry = dict(entry)
        name, kind = str(self.required(entry, "name", i)), str(self.required(entry, "kind", i))
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise self.fail("name", f"attack name {name!r} must be lower-case letters, digits, - or _", i)
        if kind not in ATTACKS:
            raise self.fail("kind", f"unknown attack {kind!r}; known: {', '.join(ATTACKS.names())}", i)
        restarts = entry.pop("restarts", 1)
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise self.fail("restarts", f"restarts must be a whole number >= 1, got {restarts!r}", i)
        spec = AttackSpec(name=name, kind=kind, restarts=restarts, view=entry.pop("view", None),
                          source=entry.pop("source", "model"))
        for key in ("name", "kind"):
            entry.pop(key)
        if spec.view is not None and spec.view not in VIEWS:
            raise self.fail("view", f"view must be one of {', '.join(VIEWS)}, got {spec.view!r}", i)
        if spec.source not in SOURCES:
            raise self.fail("source", f"source must be one of {', '.join(SOURCES)}, got {spec.source!r}", i)
        if spec.restarts > 1 and spec.adapter.minimum_norm:
            raise self.fail("restarts", f"restarts must be 1 for {kind}, a minimum-norm attack that runs once", i)
        spec.params = self.params(spec.adapter, entry, i)
        return spec

    def params(self, cls: type, entry: dict, i: int) -> dict:
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in entry.items():
            if key not in known:
                raise self.fail(key, f"{cls.__name__} has no parameter {key!r}; it takes: {', '.join(known) or 'none'}", i)
            expected = type(known[key].default)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                if not (expected is float and isinstance(value, int) and not isinstance(value, bool)):
                    raise self.fail(key, f"{key} must be {expected.__name__}, got {value!r}", i)
            problem = _param_problem(cls, key, value)
            if problem:
                raise self.fail(key, problem, i)
        return {k: (float(v) if type(known[k].default) is float else v) for k, v in entry.items()}


def _param_problem(cls: type, key: str, value: Any) -> str | None:
    """What is wrong with one adapter parameter's value, or None: counts >= 1, rates > 0, known norms and losses."""
    if key == "norm" and value not in cls.NORMS:
        if value not in NORMS:
            return f"unknown norm {value!r}; known: {', '.join(NORMS)}"
        return f"{cls.__name__} measures {' or '.join(cls.NORMS)} only, not {value}; pick another attack for {value}"
    if key == "loss" and value not in LOSSES:
        return f"loss must be one of {', '.join(LOSSES)}, got {value!r}"
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if isinstance(value, int) and value < 1:
        return f"{key} must be >= 1, got {value}"
    if isinstance(value, float) and not (value >= 0 if key in NON_NEGATIVE else value > 0):
        return f"{key} must be {'>= 0' if key in NON_NEGATIVE else '> 0'}, got {value}"
    return None
