"""Budgets (epsilons) as users write them: numbers or fractions such as 8/255, in units of the [0, 1] range."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from robustjpeg.errors import ConfigError


def parse_fraction(text: str | float) -> float:
    """'8/255' or '0.03' -> float; the CLI, suite files and benchmark files share this."""
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{text!r} is not a number or fraction such as 8/255") from exc


def parse_budget(text: str | float) -> float:
    """One budget ('8/255', '0.3'), checked to lie in [0, 1]."""
    return parse_eps_list([text])[0]


def parse_eps_list(text: str | list, upper: float = 1.0) -> list[float]:
    """'0,1/255,0.3' (or a list of such items) -> floats, each checked to lie in [0, upper] (1: Linf image range;
    L2 budgets pass math.inf)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    values = [parse_fraction(part) for part in parts if str(part).strip()]
    if not values:
        raise ConfigError("a budget list needs at least one budget, e.g. 0,2/255,8/255")
    bad = [v for v in values if not 0.0 <= v <= upper]
    if bad and upper == 1.0:
        raise ConfigError(f"budgets must lie in [0, 1] (image range), got {bad}; write 8/255, not 8")
    if bad:
        raise ConfigError(f"L2 budgets are distances >= 0, got {bad}")
    return values


# Linf grid and standard budget per data family where the suites' CIFAR grid (up to 32/255, standard 8/255) does not
# fit: MNIST digits are customarily attacked up to 0.3.
FAMILY_BUDGETS: dict[str, tuple[list[float], float]] = {"mnist": ([0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3], 0.3)}
# The same for L2 (the suites' grid runs to 3.0 with standard 0.5 for CIFAR-size images; MNIST's customary one is 2.0).
FAMILY_L2_BUDGETS: dict[str, tuple[list[float], float]] = {"mnist": ([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], 2.0)}


def choose_budgets(suite_eps: list[float], suite_standard: float, family: str | None, *, shipped: bool,
                   eps: list[float] | None = None, standard_eps: float | None = None) -> tuple[list[float], float]:
    """The Linf grid and standard budget of a sweep: flags first, then the data family's (for a shipped suite), then
    the suite's own; a standard budget outside the grid is refused, since the headline and checks 12-13 need it."""
    data = FAMILY_BUDGETS.get(family or "") if shipped else None
    grid = sorted(set(eps if eps is not None else data[0] if data else suite_eps))
    wanted = [standard_eps] if standard_eps is not None else [data[1] if data else suite_standard, suite_standard]
    standard = next((e for s in wanted for e in grid if abs(s - e) < 1e-9), None)
    if standard is None:
        raise ConfigError(f"the standard budget {wanted[0]:.6g} is not in the budget grid "
                          f"{', '.join(f'{e:.6g}' for e in grid)}; add it to --eps, or name one of the grid with "
                          "--standard-eps (standard_eps in a benchmark file)")
    return grid, standard


def fit_suite(suite, reference: str | Path | None, family: str | None, eps: list[float] | None = None,
              standard_eps: float | None = None, l2_eps: list[float] | None = None,
              standard_l2_eps: float | None = None):
    """`suite` (loaded from `reference`, a shipped name or a file; None: built in Python) over the budgets
    choose_budgets picks, and over the L2 grid given, else the data family's (for a shipped suite), else its own."""
    shipped = reference is not None and not (Path(reference).suffix == ".toml" or Path(reference).exists())
    suite = suite.with_eps(*choose_budgets(suite.eps, suite.standard_eps, family, shipped=shipped, eps=eps,
                                           standard_eps=standard_eps))
    data = FAMILY_L2_BUDGETS.get(family or "") if shipped else None
    return suite.with_l2(l2_eps if l2_eps is not None else data[0] if data else None,
                         standard_l2_eps if standard_l2_eps is not None else data[1] if data else None)
