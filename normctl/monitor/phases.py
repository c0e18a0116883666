"""Training phases of a normalised layer under a decaying schedule (Defazio 2025, §3.1).

1. **burn-in** — the measured ‖g‖/‖θ‖ approaches its predicted steady state;
2. **steady state** — it tracks the prediction;
3. **tail blow-up** — near the end γ_t → 0 pushes the prediction (and with it the gradient
   norm) up.

Everything here is a pure function of logged series, so it runs on a finished run directory
as well as on a live monitor, and is tested on constructed curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Phases:
    """Indices into the series: burn-in is ``[0, steady_start)``, the tail ``[tail_start, end)``."""

    steady_start: int | None  # first index inside the tolerance band (None: never reached)
    tail_start: int | None  # first index of the tail blow-up (None: no blow-up)
    length: int

    def label(self, i: int) -> str:
        if self.tail_start is not None and i >= self.tail_start:
            return "tail"
        if self.steady_start is None or i < self.steady_start:
            return "burn-in"
        return "steady"


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def tail_blowup_score(values: Sequence[float], *, window: int | None = None) -> float:
    """Final value over the minimum of the second half, on a smoothed series.

    1.0 means no rise at the end of training; the paper's AdamW runs show about 2 (the gradient
    norm "more than doubles"). NaN for a series too short to have a second half.
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < 4:
        return math.nan
    smoothed = smooth(values, window or max(1, len(values) // 20))
    floor = min(smoothed[len(smoothed) // 2 :])
    return smoothed[-1] / floor if floor > 0 else math.inf


def tail_rise(values: Sequence[float | None], *, tail: float = 0.1, middle: tuple[float, float] = (0.4, 0.6)) -> float:
    """Mean over the last ``tail`` of the series over the mean over its ``middle`` window.

    The end-of-training rise of the gradient norm as a ratio of two means, each over many
    points, so that noise moves it little (unlike :func:`tail_blowup_score`, a ratio of one
    smoothed point to a minimum, which sits above 1 from noise alone). 1.0: no rise. Compute it
    from every step's value when a run ends: a thinned series gives another number. NaN for a
    series too short to have both windows."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    middle_window, tail_window = tail_windows(n, tail=tail, middle=middle)
    last = finite[tail_window.start :]
    mid = finite[middle_window.start : middle_window.stop]
    if n < 10 or not mid:
        return math.nan
    mid_mean = sum(mid) / len(mid)
    return (sum(last) / len(last)) / mid_mean if mid_mean > 0 else math.inf


def tail_windows(n: int, *, tail: float = 0.1, middle: tuple[float, float] = (0.4, 0.6)) -> tuple[range, range]:
    """The indices :func:`tail_rise` compares in a series of ``n`` values: its ``middle`` window and
    its last ``tail`` (at least one value)."""
    return range(round(n * middle[0]), round(n * middle[1])), range(n - max(1, round(n * tail)), n)


def detect_phases(
    measured: Sequence[float],
    predicted: Sequence[float],
    *,
    tolerance: float = 0.25,
    rise: float = 1.25,
    window: int | None = None,
) -> Phases:
    """Split a ratio series into burn-in / steady state / tail blow-up.

    * steady state starts at the first point whose smoothed relative error
      |measured/predicted − 1| is within ``tolerance``;
    * the tail starts after the minimum of the smoothed measured series in the second half, if
      the series ends more than ``rise`` times above that minimum.
    """
    if len(measured) != len(predicted):
        raise ValueError(f"measured and predicted must have the same length, got {len(measured)} and {len(predicted)}")
    n = len(measured)
    if n == 0:
        return Phases(None, None, 0)
    w = window or max(1, n // 20)
    m = smooth(measured, w)
    errors = [abs(a / b - 1) if b else math.inf for a, b in zip(m, predicted)]
    steady_start = next((i for i, e in enumerate(errors) if e <= tolerance), None)
    half = n // 2
    tail_start = None
    if n >= 4:
        low = min(range(half, n), key=m.__getitem__)
        if m[low] > 0 and m[-1] / m[low] > rise:
            tail_start = low + 1 if low + 1 < n else None
    return Phases(steady_start, tail_start, n)
