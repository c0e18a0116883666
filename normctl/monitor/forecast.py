"""What decay will have done to each group's norm by the run's end, from the updates seen so far.

The same ODE as ``target="auto"`` (docs/math.md, "a run of known length"): decoupled decay and the
update u (the step per unit of lr, without the decay) move the squared norm as::

    ‖θ_{t+1}‖² = (1 − γ_t·λ_t)²·‖θ_t‖² + γ_t²·‖u‖²

with ‖u‖² the mean of what the monitor measured (``group/<g>/update_size``, groups with
decoupled decay: AdamW, AdamC, AdamWN's uncontrolled groups, torch's Muon) and λ_t the decay the optimizer
applied (``group/<g>/weight_decay``: AdamC's follows γ_t/γ_max). Adam's update is not orthogonal
to the weight (its preconditioner breaks the orthogonality of a normalised layer's gradient), and
its measured cosine with the weight (``update_cosine``) adds the term 2f·γ·c·‖θ‖·‖u‖: without it
the forecasts of a small LayerNorm net came out 2–5× below the norms reached. Iterated from the
last measured step to the run's end (:func:`normctl.rules.decayed_norm_sq_after`) it gives the
norm there. ‖u‖² and the cosine are the means over the recent half of the measured steps: Adam's
‖u‖ grows early in a run as v̂ forgets the first, large gradients. Where the updates pull the
weights inward (cosine < 0, the loss shrinking an output layer) there is no forecast.

For a layer followed by a normalisation the gradient scales as 1/‖θ‖, so ‖g‖/‖θ‖ scales as
1/‖θ‖² — the mechanism of the end-of-run rise of Defazio (2025): when the lr decays, AdamW's
steady-state norm shrinks with it and the gradient grows. The forecast of ‖g‖/‖θ‖ assumes this
and a gradient direction whose size stays as measured; for other layers it is a bound of that
kind, not a measurement.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..rules import decayed_norm_sq_path, update_sq_between
from .phases import tail_windows

Series = Callable[[int], float]  # a value of the s-th optimizer step, s counted from 1 (as records' "step")


@dataclass(frozen=True)
class Forecast:
    """One group's norm and ‖g‖/‖θ‖ now (at ``at_step``) and predicted at ``total_steps``."""

    group: str
    at_step: int
    total_steps: int
    norm_ratio_now: float  # ‖θ‖/‖θ_0‖
    norm_ratio_end: float | None  # None: the updates pull the weights inward, see ``cosine``
    grad_ratio_now: float | None  # ‖g‖/‖θ‖, mean of the last measured steps
    grad_ratio_end: float | None
    time_scale: float | None  # 1/(2γλ) at the largest γ_t·λ_t still to come: steps to the steady state
    cosine: float = 0.0  # cos(θ, −u), the recent mean: > 0 outward, < 0 the loss pulls inward
    # ‖g‖/‖θ‖ ∝ 1/‖θ‖² along the forecast path: its mean over the run's last 10 % over its mean over
    # 40-60 % (as :func:`~normctl.monitor.phases.tail_rise`); None where 40 % is already past
    ratio_rise: float | None = None

    def __str__(self) -> str:
        if self.norm_ratio_end is None:
            measured = f" (cos(θ, −u) = {self.cosine:.2f})" if self.cosine > -1 else ""  # -1: seen in the norms
            return (
                f"{self.group}: ‖θ‖/‖θ0‖ {self.norm_ratio_now:.3g} at step {self.at_step}; not forecast: the updates "
                f"pull these weights inward{measured}, a pull of the loss that decay's steady state does not describe"
            )
        line = (
            f"{self.group}: ‖θ‖/‖θ0‖ {self.norm_ratio_now:.3g} at step {self.at_step} → "
            f"{self.norm_ratio_end:.3g} at step {self.total_steps}"
        )
        if self.grad_ratio_now is not None and self.grad_ratio_end is not None:
            line += f"; ‖g‖/‖θ‖ {self.grad_ratio_now:.3g} → {self.grad_ratio_end:.3g}"
        if self.ratio_rise is not None:
            line += f", {self.ratio_rise:.2f}× over the last 10 % against mid-run"
        if self.time_scale is None:
            return line + " (no decay)"
        settles = "settles" if self.total_steps - self.at_step >= 3 * self.time_scale else "does not settle"
        return line + f" (decay's time scale {self.time_scale:.0f} steps: {settles} by the end)"


def forecast_group(
    group: str,
    *,
    at_step: int,
    total_steps: int,
    norm: float,
    init_norm: float,
    update_sq: float,
    cosine: float = 0.0,
    grad_ratio: float | None,
    lr_at: Series,
    decay_at: Series,
) -> Forecast:
    """The forecast for one group from its norm ``norm`` after ``at_step`` steps, its mean ‖u‖²
    ``update_sq`` and the lr and decay of every step to come."""
    if cosine < 0:  # the loss, not the decay, sets where these weights go: extrapolating it could reach 0
        return Forecast(group, at_step, total_steps, norm / init_norm, None, grad_ratio, None, None, cosine)
    remaining = range(at_step + 1, total_steps + 1)  # the steps still to take, counted from 1
    # one pass over the steps to come (a run of 10⁶ steps is not held in memory): the norm path, the
    # largest γ_t·λ_t, and 1/‖θ‖² over the windows of ``tail_rise`` (step s is index s − 1)
    middle, tail = tail_windows(total_steps)
    steps, rates = itertools.tee((lr_at(t), decay_at(t)) for t in remaining)
    norm_sq, rate = norm * norm, 0.0
    inverse_sums, counts = {middle: 0.0, tail: 0.0}, {middle: 0, tail: 0}
    path = decayed_norm_sq_path(norm_sq, update_sq, steps, cosine)
    for index, norm_sq, (lr, decay) in zip(itertools.count(at_step), path, rates):
        rate = max(rate, lr * decay)
        for window in (middle, tail):
            if index in window and norm_sq > 0:
                inverse_sums[window] += 1 / norm_sq
                counts[window] += 1
    end = math.sqrt(norm_sq)
    grad_end = grad_ratio * (norm / end) ** 2 if grad_ratio is not None and end > 0 else None
    # the rise of ‖g‖/‖θ‖ ∝ 1/‖θ‖² (a layer followed by a normalisation: ‖g‖ ∝ 1/‖θ‖, Defazio 2025),
    # where the path covers both windows
    covered = total_steps >= 10 and middle and counts[middle] == len(middle) and counts[tail] == len(tail)
    rise = (inverse_sums[tail] / len(tail)) / (inverse_sums[middle] / len(middle)) if covered else None
    return Forecast(
        group,
        at_step,
        total_steps,
        norm / init_norm,
        end / init_norm,
        grad_ratio,
        grad_end,
        1 / (2 * rate) if rate > 0 else None,
        cosine,
        rise,
    )


def from_records(
    records: Sequence[dict[str, Any]],
    *,
    at_step: int | None = None,
    total_steps: int | None = None,
    future: Callable[[str], tuple[Series, Series] | None] | None = None,
    source: str = "norms",
) -> list[Forecast]:
    """Each group's forecast from monitor records up to ``at_step`` (default: the last), to
    ``total_steps`` (default: the last record's step). The lr and decay of each step are
    ``future(group)`` where it gives them (a schedule known in advance), else read off the records
    (a finished run, seen in hindsight: linear between measured steps, the last value held).

    ``source`` says where ‖u‖² comes from: ``"norms"`` (default), the effective update that took
    the group's norm from its value at half of ``at_step`` to its value at ``at_step``
    (:func:`normctl.rules.update_sq_between`) — any group the monitor measures, the updates'
    alignment with the weight included; ``"updates"``, the measured update size and cosine
    (``group/<g>/update_size``, ``update_cosine``: groups with decoupled decay). On the project's
    runs the norms forecast better (results/doctor: the measured cosine, taken early, overstates
    the one that follows)."""
    if source not in ("updates", "norms"):
        raise ValueError(f"source must be 'updates' or 'norms', got {source!r}")
    if not records:
        return []
    at_step = records[-1]["step"] if at_step is None else at_step
    total_steps = records[-1]["step"] if total_steps is None else total_steps
    seen = [r for r in records if r["step"] <= at_step]
    out = []
    # the groups with a decay to forecast: those the monitor measured as decayed (decoupled decay),
    # and any other group whose lr and decay the caller gives
    labels = group_labels(seen, "update_size" if source == "updates" else "weight_decay")
    if source == "norms" and future is not None:
        labels += [g for g in group_labels(seen, "weight_norm") if g not in labels and future(g) is not None]
    for label in labels:
        key = f"group/{label}/"
        measured = [r for r in seen if _finite(r.get(key + "norm_ratio")) and r[key + "norm_ratio"] > 0]
        if not measured:
            continue
        last = measured[-1]
        given = future(label) if future is not None else None
        lr_at, decay_at = given or (_interpolated(records, f"lr/{label}"), _interpolated(records, key + "weight_decay"))
        if source == "updates":
            estimate = _from_update_sizes(seen, key)
        else:
            estimate = _from_norms(measured, key, lr_at, decay_at)
        if estimate is None:
            continue
        update_sq, cosine = estimate
        ratios = [r[key + "grad_weight_ratio"] for r in seen if _finite(r.get(key + "grad_weight_ratio"))][-3:]
        norm = last[key + "weight_norm"]
        out.append(
            forecast_group(
                label,
                at_step=last["step"],
                total_steps=total_steps,
                norm=norm,
                init_norm=norm / last[key + "norm_ratio"],
                update_sq=update_sq,
                cosine=cosine,
                grad_ratio=sum(ratios) / len(ratios) if ratios else None,
                lr_at=lr_at,
                decay_at=decay_at,
            )
        )
    return out


def _from_update_sizes(seen: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """Mean ‖u‖² and cosine over the recent half of the measured steps: Adam's ‖u‖ grows as v̂
    forgets the first gradients."""
    sizes = [r[key + "update_size"] for r in seen if _finite(r.get(key + "update_size"))]
    sizes = sizes[len(sizes) // 2 :]
    if not sizes:
        return None
    cosines = [r[key + "update_cosine"] for r in seen if _finite(r.get(key + "update_cosine"))]
    cosines = cosines[len(cosines) // 2 :]
    return sum(s * s for s in sizes) / len(sizes), (sum(cosines) / len(cosines) if cosines else 0.0)


def _from_norms(
    measured: Sequence[dict[str, Any]], key: str, lr_at: Series, decay_at: Series
) -> tuple[float, float] | None:
    """The effective ‖u‖² over the recent half of the measured steps, from the norms at its two
    ends; a negative one (the norm fell faster than decay takes it) is returned with cosine −1:
    the loss, not decay, sets where these weights go."""
    last = measured[-1]
    first = next(r for r in measured if r["step"] >= last["step"] / 2)
    if first is last:
        return None
    steps = ((lr_at(t), decay_at(t)) for t in range(first["step"] + 1, last["step"] + 1))
    update_sq = update_sq_between(first[key + "weight_norm"] ** 2, last[key + "weight_norm"] ** 2, steps)
    if not math.isfinite(update_sq):
        return None
    return (update_sq, 0.0) if update_sq >= 0 else (0.0, -1.0)


def scheduled(
    peak_lr: float, multiplier: Callable[[int], float], weight_decay: float, corrected_max_lr: float | None = None
) -> tuple[Series, Series]:
    """Each optimizer step's lr and decay, s counted from 1, under ``LambdaLR(multiplier)``:
    the scheduler steps after the optimizer, so step s takes the multiplier of s − 1. With
    ``corrected_max_lr`` γ_max the decay is AdamC's λ·γ_t/γ_max, else the constant λ."""

    def lr_at(s: int) -> float:
        return peak_lr * float(multiplier(max(0, s - 1)))

    def decay_at(s: int) -> float:
        return weight_decay if corrected_max_lr is None else weight_decay * lr_at(s) / corrected_max_lr

    return lr_at, decay_at


def group_labels(records: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """The groups whose ``group/<label>/<metric>`` appears in ``records``, in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            if k.startswith("group/") and k.endswith(f"/{metric}"):
                seen[k[len("group/") : -len(metric) - 1]] = None
    return list(seen)


def _interpolated(records: Sequence[dict[str, Any]], key: str) -> Series:
    """``key``'s value at any step: linear between the records that hold it, held past either end."""
    points = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
    steps = [s for s, _ in points]

    def at(t: int) -> float:
        i = bisect_right(steps, t)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (s0, v0), (s1, v1) = points[i - 1], points[i]
        return v0 + (v1 - v0) * (t - s0) / (s1 - s0)

    return at if points else (lambda t: 0.0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
