"""Paired per-seed differences with a 95 % interval: how comparisons across seeds are reported.

Two methods trained on the same seeds share initial weights and data order, so their per-seed
differences cancel what the seed does to both; the mean difference gets Student's t interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# Student's t, two-sided 95 %, by degrees of freedom (1-30); beyond 30 the normal's 1.96 is close.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
T_975 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std; a diverged run's NaN makes both NaN, which no mean hides."""
    return {"mean": statistics.mean(values), "std": spread(values), "n": len(values)}


def finite_stats(values: Sequence[float | None]) -> dict[str, float]:
    """Mean ± std over the values that are finite numbers, and how many were not (a diverged
    run's NaN, a statistic stored as null): for tables that report the runs that trained."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    stats = mean_std(finite) if finite else {"mean": math.nan, "std": math.nan, "n": 0}
    return {**stats, "nonfinite": len(values) - len(finite)}


def spread(values: list[float]) -> float:
    """The sample std (0 for one value, NaN where a value is not finite: ``statistics.stdev``
    stops with an exception on NaN or infinity, after runs that took hours)."""
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


def finite_by_key(records: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, list[float]]:
    """Each of ``keys`` that every record holds a finite number for, with those numbers: per-run
    statistics (a tail rise over too short a run is stored as null) for a mean over runs."""
    out = {}
    for key in keys:
        values: list[Any] = [r.get(key) for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            out[key] = [float(v) for v in values]
    return out


def paired_difference(ours: dict[int, float], theirs: dict[int, float]) -> dict[str, Any]:
    """``ours − theirs`` on the seeds both have: each difference, their mean, and the mean's
    95 % t interval (None with a single seed)."""
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        raise ValueError("the two methods share no seed")
    diffs = [ours[s] - theirs[s] for s in seeds]
    mean = statistics.mean(diffs)
    interval = None
    if len(diffs) > 1:
        half = t_975(len(diffs) - 1) * spread(diffs) / math.sqrt(len(diffs))
        interval = [mean - half, mean + half]
    return {"seeds": seeds, "differences": diffs, "mean": mean, "ci95": interval}


def t_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else 1.96
