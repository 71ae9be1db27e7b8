"""Attack suites: TOML files read strictly (every mistake names the file, line and field) into a Suite of AttackSpecs."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from robustjpeg.attacks.adapters import ATTACKS, NORMS, Attack
from robustjpeg.attacks.budgets import parse_fraction
from robustjpeg.errors import ConfigError, UnknownName

SUITES = resources.files("robustjpeg") / "suites"  # the shipped suite files, inside the installed package


SHIPPED_SUITES = tuple(sorted(f.name.removesuffix(".toml") for f in SUITES.iterdir() if f.name.endswith(".toml")))


VIEWS = ("soft", "hard", "ste")


SUITE_KEYS = ("name", "description", "norm", "eps", "standard_eps", "l2_eps", "standard_l2_eps", "cascade", "attacks")


LOSSES = ("ce", "dlr")


NON_NEGATIVE = ("kappa",)  # float parameters that may be 0; every other float must be > 0


SOURCES = ("model", "transfer")


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
