"""Budgets (epsilons) as users write them: numbers or fractions such as 8/255, in units of the [0, 1] range."""

from __future__ import annotations

from fractions import Fraction

from robustjpeg.errors import ConfigError


def parse_fraction(text: str | float) -> float:
    """'8/255' or '0.03' -> float; the CLI, suite files and benchmark files share this."""
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{text!r} is not a number or fraction such as 8/255") from exc


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
