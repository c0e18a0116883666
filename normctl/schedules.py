"""Schedules: pure, picklable functions of the step.

A schedule maps the step index t = 0, 1, 2, … to a float. ``t`` counts optimizer steps the
way torch LR schedulers count them: the first ``optimizer.step()`` uses ``schedule(0)``.

They serve three purposes:

* AdamWN's target ratio r_t and update rate k_t (``target=``, ``rate=``);
* learning-rate multipliers η_t for ``torch.optim.lr_scheduler.LambdaLR``;
* anything else in an experiment config that changes with the step.

Every schedule is a frozen dataclass, so it pickles with ``torch.save`` and survives an
optimizer ``state_dict()`` round trip (a lambda would not).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Schedule",
    "Constant",
    "LinearRamp",
    "Cosine",
    "PiecewiseLinear",
    "constant",
    "linear_ramp",
    "cosine",
    "piecewise_linear",
    "target_from_adamw",
    "from_lr_scheduler",
    "as_schedule",
]

Schedule = Callable[[int], float]


@dataclass(frozen=True)
class Constant:
    """value at every step."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class LinearRamp:
    """start → end linearly over ``steps`` steps, then end forever (the paper's r_t)."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * (step / self.steps)


@dataclass(frozen=True)
class Cosine:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup`` steps, then a half
    cosine from ``peak`` down to ``end`` at step ``total``; ``end`` after that.

    With ``peak=1.0`` it is a learning-rate multiplier η_t for ``LambdaLR``: the schedule's
    maximum is then the optimizer's base lr, which is what AdamC/SGDC take as γ_max.
    """

    peak: float
    end: float
    total: int
    warmup: int = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError(f"total must be > 0, got {self.total}")
        if not 0 <= self.warmup <= self.total:
            raise ValueError(f"warmup must be in [0, total={self.total}], got {self.warmup}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_start + (self.peak - self.warmup_start) * step / self.warmup
        if step >= self.total:
            return self.end
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.end + (self.peak - self.end) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class PiecewiseLinear:
    """Linear interpolation between ``(step, value)`` knots; flat before the first and after
    the last knot."""

    knots: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.knots:
            raise ValueError("knots must hold at least one (step, value) pair")
        steps = [s for s, _ in self.knots]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"knot steps must be strictly increasing, got {steps}")

    def __call__(self, step: int) -> float:
        i = bisect.bisect_right(self.knots, (step, math.inf))  # the knots at or before ``step``: O(log n)
        if i == 0:
            return self.knots[0][1]
        if i == len(self.knots):
            return self.knots[-1][1]
        (s0, v0), (s1, v1) = self.knots[i - 1], self.knots[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


# Lower-case constructors read well at call sites: ``target=linear_ramp(1.0, 2.4, 2500)``.


def constant(value: float) -> Constant:
    return Constant(float(value))


def linear_ramp(start: float, end: float, steps: int) -> LinearRamp:
    return LinearRamp(float(start), float(end), int(steps))


def cosine(peak: float, end: float, total: int, *, warmup: int = 0, warmup_start: float = 0.0) -> Cosine:
    return Cosine(float(peak), float(end), int(total), int(warmup), float(warmup_start))


def piecewise_linear(knots: Sequence[tuple[int, float]]) -> PiecewiseLinear:
    return PiecewiseLinear(tuple((int(s), float(v)) for s, v in knots))


def from_lr_scheduler(scheduler: object, total_steps: int, *, tolerance: float = 1e-4) -> PiecewiseLinear | None:
    """The lr multiplier η_t of a ``LambdaLR`` (its first group's: the Hugging Face Trainer's
    schedulers, most Lightning ones) over ``total_steps``, as a :class:`PiecewiseLinear` within
    ``tolerance`` of it at the steps it checks (knots bisected until the line between two
    knots meets the multiplier at the quarter points: a warm-up's corner gets its own knot): a
    normctl schedule, so an ``AutoTarget`` holding it still loads with ``weights_only=True``,
    which the scheduler's own function would not. None for any other scheduler (its future lrs
    cannot be read without stepping it) or no scheduler."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not callable(lambdas[0]) or not (isinstance(total_steps, int) and total_steps >= 1):
        return None
    multiplier = lambdas[0]

    @functools.cache  # each step's multiplier read once: an interval's ends are its neighbours' too
    def at(t: int) -> float:
        return float(multiplier(t))

    last = total_steps - 1
    pending = sorted({round(i * last / 64) for i in range(65)})
    intervals = list(zip(pending, pending[1:]))
    knots = set(pending)
    while intervals:
        a, b = intervals.pop()
        if b - a < 2:
            continue
        quarters = {a + (b - a) * q // 4 for q in (1, 2, 3)} - {a, b}
        slope = (at(b) - at(a)) / (b - a)
        if any(abs(at(t) - at(a) - slope * (t - a)) > tolerance for t in quarters):
            middle = (a + b) // 2
            knots.add(middle)
            intervals += [(a, middle), (middle, b)]
    return piecewise_linear([(t, at(t)) for t in sorted(knots)])


def target_from_adamw(final_norm_ratio: float, ramp_steps: int, *, start: float = 1.0) -> LinearRamp:
    """AdamWN's target r_t matched to an AdamW run (Loshchilov 2023, Section 4).

    Measure ‖θ_T‖/‖θ_0‖ at the end of an AdamW run (2.415 in the paper for weight decay 0.1),
    then ramp the target linearly from ``start`` to that ratio over ``ramp_steps`` (2 500 of
    the paper's 50k–100k) and hold it.
    """
    if final_norm_ratio < 0:
        raise ValueError(f"final_norm_ratio must be >= 0, got {final_norm_ratio}")
    return linear_ramp(start, final_norm_ratio, ramp_steps)


def as_schedule(value: float | Schedule, name: str) -> Schedule:
    """A float becomes :class:`Constant`; a callable is kept. Anything else is a TypeError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a callable step -> float, got a bool")
    if isinstance(value, (int, float)):
        return Constant(float(value))
    if callable(value):
        return value
    raise TypeError(f"{name} must be a float or a callable step -> float, got {type(value).__name__}")
