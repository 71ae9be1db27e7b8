"""How close each attack comes to the best one, per sample (AttackBench, Cina et al. 2024): pure numpy on outcomes.

A minimum-norm attack gives each sample a distance d (inf where it failed); a fixed-budget attack gives an upper bound,
the smallest grid budget at which it broke the sample. The reference distance of a sample is the smallest any attack
found. An attack's robust-accuracy curve r(e) = share of samples with distance > e has area mean(min(d, E)) over
[0, E]; its optimality is the area under the best-of-all curve divided by the area under its own (1 = the best).
"""

from __future__ import annotations

import numpy as np


def first_break(curve: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Per sample, the smallest budget at which a fixed-budget attack's nested outcomes say 'broken' (inf: never)."""
    n = len(curve[0][1]) if curve else 0
    bound = np.full(n, np.inf, dtype=np.float64)
    for eps, robust in sorted(curve, key=lambda item: item[0]):
        bound = np.where(~robust & np.isinf(bound), eps, bound)
    return bound


def best_distance(distances: dict[str, np.ndarray], bounds: list[np.ndarray]) -> np.ndarray:
    """Per sample, the smallest distance any minimum-norm attack found or any fixed-budget attack bounded."""
    return np.minimum.reduce([np.asarray(d, dtype=np.float64) for d in [*distances.values(), *bounds]])


def curve_area(distance: np.ndarray, upper: float) -> float:
    """Area under the robust-accuracy curve over [0, upper]: mean of each sample's distance clipped to upper."""
    return float(np.minimum(np.asarray(distance, dtype=np.float64), upper).mean()) if len(distance) else 0.0


def optimality(distance: np.ndarray, best: np.ndarray, upper: float) -> float:
    """Area under the best-of-all curve over the attack's own (1.0: as good as the best; 0: found nothing)."""
    own = curve_area(distance, upper)
    return 1.0 if own == 0 else curve_area(best, upper) / own


def disagreement(broken_fixed: np.ndarray, distances: list[np.ndarray], eps: float) -> tuple[int, int]:
    """At one budget: (samples a fixed-budget attack broke that every minimum-norm attack calls robust,
    samples some minimum-norm attack broke within eps that every fixed-budget attack missed)."""
    found = np.logical_or.reduce([np.asarray(d) <= eps for d in distances])
    return int((broken_fixed & ~found).sum()), int((found & ~broken_fixed).sum())
