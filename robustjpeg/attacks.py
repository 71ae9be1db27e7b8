"""Attack adapters (one small class each, looked up by name) and attack suites read from TOML files."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustjpeg.budgets import parse_fraction
from robustjpeg.errors import ConfigError, UnknownName
from robustjpeg.registry import Registry

ATTACKS: Registry[type] = Registry("attack")
SUITE_DIRS = (Path(__file__).resolve().parent / "suites", Path(__file__).resolve().parents[1] / "attacks")
SHIPPED_SUITES = ("quick", "standard", "adaptive", "adaptive-quick", "paper")
VIEWS = ("soft", "hard", "ste")
SOURCES = ("model", "transfer")


@dataclass
class Attack:
    """An adapter: turns (model, x, y, eps) into adversarial examples; the sweep engine owns every loop."""

    norm = "Linf"  # the norm its budget is measured in
    minimum_distortion = False  # True: runs once without a budget; the curve comes from each sample's distance
    black_box = False  # True: queries outputs only (compared against white-box runs in the checks)
    cheap = True  # cheap enough to probe at eps = 0 in the checks

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        raise NotImplementedError

    def strength(self) -> int:
        """Iterations spent per restart, used to order configurations of one kind (check 7)."""
        return 1


@ATTACKS.register("fgsm")
@dataclass
class FGSM(Attack):
    """Fast gradient sign method (torchattacks); its direction does not depend on eps, so the engine reuses it."""

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
    """Linf PGD (torchattacks) with its step scaled to the budget: alpha = rel_stepsize * eps / steps."""

    steps: int = 10
    rel_stepsize: float = 2.5
    random_start: bool = True

    def perturb(self, model, x, y, eps, seed):
        import torchattacks

        alpha = self.rel_stepsize * eps / self.steps
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=self.steps, random_start=self.random_start)(x, y)

    def strength(self) -> int:
        return self.steps


@ATTACKS.register("cw")
@dataclass
class CW(Attack):
    """Carlini-Wagner L2 (torchattacks): minimum distortion with fixed c, run once; curve from L2 distances."""

    norm = "L2"
    minimum_distortion = True
    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.01

    def perturb(self, model, x, y, eps, seed):
        import torchattacks

        return torchattacks.CW(model, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr)(x, y)

    def strength(self) -> int:
        return self.steps


@ATTACKS.register("apgd")
@dataclass
class APGD(Attack):
    """Auto-PGD from the official AutoAttack code (pyautoattack), Linf, cross-entropy or DLR loss."""

    steps: int = 100
    loss: str = "ce"

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack.autopgd_base import APGDAttack

        attack = APGDAttack(model, n_iter=self.steps, norm="Linf", eps=eps, seed=seed, loss=self.loss, device=x.device)
        return attack.perturb(x, y)

    def strength(self) -> int:
        return self.steps


@ATTACKS.register("autoattack")
@dataclass
class AutoAttack(Attack):
    """The official AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; pyautoattack)."""

    cheap = False

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack import AutoAttack as Official

        attack = Official(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
        attack.verbose = False
        adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
        return adv

    def strength(self) -> int:
        return 100


@ATTACKS.register("square")
@dataclass
class Square(Attack):
    """Square attack (pyautoattack): score-based black box, margin loss, Linf."""

    black_box = True
    cheap = False
    queries: int = 1000
    p_init: float = 0.8

    def perturb(self, model, x, y, eps, seed):
        from pyautoattack.square import SquareAttack

        attack = SquareAttack(model, norm="Linf", n_queries=self.queries, eps=eps, p_init=self.p_init, seed=seed,
                              device=x.device)
        return attack.perturb(x, y)

    def strength(self) -> int:
        return self.queries


@ATTACKS.register("noise")
@dataclass
class UniformNoise(Attack):
    """Uniform noise in the Linf ball: the baseline an attack must beat by far (check 12)."""

    black_box = True

    def perturb(self, model, x, y, eps, seed):
        gen = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return torch.clamp(x + eps * noise, 0, 1)


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
    def norm(self) -> str:
        return ATTACKS.get(self.kind).norm

    @property
    def black_box(self) -> bool:
        return self.source == "transfer" or ATTACKS.get(self.kind).black_box

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Suite:
    """A named attack suite: Linf budget grid, the standard budget, the L2 grid for CW curves, the attacks."""

    name: str
    norm: str
    eps: list[float]
    standard_eps: float
    attacks: list[AttackSpec]
    l2_eps: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
    description: str = ""

    def __post_init__(self) -> None:
        self.eps, self.l2_eps = sorted(set(map(float, self.eps))), sorted(set(map(float, self.l2_eps)))

    def with_eps(self, eps: list[float] | None, standard_eps: float | None = None) -> "Suite":
        """The same suite over another Linf grid (the CLI's --eps) and, optionally, another standard budget."""
        return dataclasses.replace(self, eps=self.eps if eps is None else eps,
                                   standard_eps=self.standard_eps if standard_eps is None else standard_eps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Suite":
        attacks = [AttackSpec(**a) for a in d["attacks"]]
        return cls(**{**d, "attacks": attacks})


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file: a path, or a shipped name found in the package (or the repository's attacks/ folder)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist; pass a TOML file or one of {', '.join(SHIPPED_SUITES)}")
        return path
    for folder in SUITE_DIRS:
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
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

    def budget(self, value: Any, key: str) -> float:
        try:
            eps = parse_fraction(value)
        except ConfigError as exc:
            raise self.fail(key, str(exc)) from exc
        if not 0.0 <= eps <= 1.0:
            raise self.fail(key, f"budget {value!r} lies outside [0, 1] (image range); write 8/255, not 8")
        return eps

    def required(self, data: dict, key: str, table: int | None = None) -> Any:
        if key not in data:
            raise self.fail(key, f"missing required field {key!r}", table)
        return data[key]

    def suite(self, data: dict) -> Suite:
        eps = [self.budget(v, "eps") for v in self.required(data, "eps")]
        if not eps:
            raise self.fail("eps", "needs at least one budget")
        l2 = [float(v) for v in data.get("l2_eps", Suite.__dataclass_fields__["l2_eps"].default_factory())]
        if any(v < 0 for v in l2):
            raise self.fail("l2_eps", "L2 budgets must be >= 0")
        norm = data.get("norm", "Linf")
        if norm != "Linf":
            raise self.fail("norm", f"only Linf suites are supported, got {norm!r}")
        raw = self.required(data, "attacks")
        if not raw:
            raise self.fail("attacks", "a suite needs at least one [[attacks]] entry")
        attacks = [self.attack(entry, i) for i, entry in enumerate(raw)]
        names = [a.name for a in attacks]
        if len(set(names)) != len(names):
            raise self.fail("name", f"attack names must be unique, got {names}")
        return Suite(name=str(self.required(data, "name")), norm=norm, eps=sorted(set(eps)),
                     standard_eps=self.budget(self.required(data, "standard_eps"), "standard_eps"),
                     attacks=attacks, l2_eps=sorted(set(l2)), description=str(data.get("description", "")))

    def attack(self, entry: dict, i: int) -> AttackSpec:
        entry = dict(entry)
        name, kind = str(self.required(entry, "name", i)), str(self.required(entry, "kind", i))
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise self.fail("name", f"attack name {name!r} must be lower-case letters, digits, - or _", i)
        if kind not in ATTACKS:
            raise self.fail("kind", f"unknown attack {kind!r}; known: {', '.join(ATTACKS.names())}", i)
        spec = AttackSpec(name=name, kind=kind, restarts=int(entry.pop("restarts", 1)), view=entry.pop("view", None),
                          source=entry.pop("source", "model"))
        for key in ("name", "kind"):
            entry.pop(key)
        if spec.view is not None and spec.view not in VIEWS:
            raise self.fail("view", f"view must be one of {', '.join(VIEWS)}, got {spec.view!r}", i)
        if spec.source not in SOURCES:
            raise self.fail("source", f"source must be one of {', '.join(SOURCES)}, got {spec.source!r}", i)
        if spec.restarts < 1 or (spec.restarts > 1 and ATTACKS.get(kind).minimum_distortion):
            raise self.fail("restarts", f"restarts must be >= 1 (and 1 for {kind}, which runs once per sample)", i)
        spec.params = self.params(ATTACKS.get(kind), entry, i)
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
        return {k: (float(v) if type(known[k].default) is float else v) for k, v in entry.items()}
