"""Pure functions for the monitor: steady-state predictions and batched tensor statistics.

Predictions (Defazio 2025, §3–4). For a layer followed by a normalisation the
gradient is orthogonal to the weight, and decay balances the growth the gradient causes:

* SGD with momentum μ, torch's coupled decay (effective lr γ/(1−μ))::

      ‖g‖/‖θ‖ = sqrt(2λ(1−μ)/γ_t)

* SGD with decoupled decay θ ← θ − γλθ − γ·b::

      ‖g‖/‖θ‖ = (1−μ)·sqrt(2λ/γ_t)

* Adam-family with decoupled decay θ ← θ − γ·A⁻¹g − c·θ (c = γλ for AdamW), in the norms
  weighted by A = diag(√v̂ + ε)::

      ‖g‖_{A⁻¹}/‖θ‖_A = sqrt(2c)/γ = sqrt(2λ/γ_t),      ‖θ‖_∞ ≈ γ/sqrt(2c) = sqrt(γ_t/(2λ))

Corrected decay (AdamC, SGDC on ``normalized`` groups) replaces λ by λ·γ_t/γ_max, which turns
all of these into constants of the schedule's peak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import local, reduce_across_shards
from ..optim import SGDC, AdamC, AdamWN, MuonAdamW, MuonC
from ..optim._auto_target import as_auto_target
from ..optim._base import as_number, peak_lr
from ..rules import tensor_norms
from ..schedules import as_schedule


@dataclass(frozen=True)
class Prediction:
    """What Defazio (2025) predicts for a group at its current learning rate (None: not defined)."""

    family: str | None  # "sgd", "adam", "muon", or None when no decay model applies
    ratio: float | None = None  # ‖g‖/‖θ‖ (SGD) or ‖g‖_{A⁻¹}/‖θ‖_A (Adam family)
    linf: float | None = None  # ‖θ‖_∞ (Adam family)


def sgd_steady_ratio(lr: float, weight_decay: float, momentum: float = 0.0, *, decoupled: bool = False) -> float | None:
    """‖g‖/‖θ‖ at equilibrium for SGD (see the module docstring)."""
    if lr <= 0 or weight_decay <= 0:
        return None
    if decoupled:
        return (1 - momentum) * math.sqrt(2 * weight_decay / lr)
    return math.sqrt(2 * weight_decay * (1 - momentum) / lr)


def adam_steady_ratio(lr: float, weight_decay: float) -> float | None:
    """‖g‖_{A⁻¹}/‖θ‖_A = sqrt(2λ/γ) at equilibrium for decoupled decay γλ."""
    return math.sqrt(2 * weight_decay / lr) if lr > 0 and weight_decay > 0 else None


def adam_steady_linf(lr: float, weight_decay: float) -> float | None:
    """‖θ‖_∞ ≈ sqrt(γ/(2λ)) at equilibrium for AdamW-style decay."""
    return math.sqrt(lr / (2 * weight_decay)) if lr > 0 and weight_decay > 0 else None


def is_corrected(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether ``group``'s decay follows the schedule, λ·γ_t/γ_max (AdamC, SGDC on normalised groups)."""
    return isinstance(optimizer, (AdamC, SGDC, MuonC)) and bool(group.get("normalized"))


def effective_weight_decay(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """λ as the optimizer applies it this step: λ·γ_t/γ_max on corrected groups, else λ."""
    weight_decay = group.get("weight_decay", 0.0)
    if is_corrected(optimizer, group):
        return weight_decay * as_number(group["lr"]) / as_number(peak_lr(group))
    return weight_decay


def predict(optimizer: torch.optim.Optimizer, group: dict) -> Prediction:
    """The steady state Defazio (2025) predicts for ``group`` of any torch or normctl optimizer."""
    lr, wd = as_number(group.get("lr", 0.0)), effective_weight_decay(optimizer, group)
    if isinstance(optimizer, AdamWN):
        if group["control"]:
            return Prediction(None)  # norm control: the target norm is the prediction
        return Prediction("adam", adam_steady_ratio(lr, wd), adam_steady_linf(lr, wd))
    if _is_muon(optimizer) or (isinstance(optimizer, MuonAdamW) and group["muon"]):
        return Prediction("muon")  # decoupled decay on orthogonalised updates: its norm is forecast, not a ratio
    if isinstance(optimizer, SGDC) or type(optimizer) is torch.optim.SGD:
        decoupled = bool(group.get("decoupled_weight_decay", False))
        return Prediction("sgd", sgd_steady_ratio(lr, wd, group.get("momentum", 0.0), decoupled=decoupled))
    decoupled_adam = isinstance(optimizer, (torch.optim.AdamW, AdamC, MuonAdamW)) or (
        isinstance(optimizer, torch.optim.Adam) and group.get("decoupled_weight_decay", False)
    )
    if decoupled_adam:
        return Prediction("adam", adam_steady_ratio(lr, wd), adam_steady_linf(lr, wd))
    return Prediction(None)


def _is_muon(optimizer: torch.optim.Optimizer) -> bool:
    muon = getattr(torch.optim, "Muon", None)  # torch >= 2.9
    return muon is not None and isinstance(optimizer, muon)


def adamwn_target_norms(optimizer: AdamWN, group: dict, params: Sequence[Tensor]) -> list[float | None]:
    """τ for each tensor of a controlled AdamWN group, at the target of the last step taken."""
    if not group["control"] or group["schedule_step"] == 0:
        return [None] * len(params)
    if as_auto_target(group["target"]) is not None:  # measured in the run: None until chosen
        if group["scope"] != "tensor":
            return [group.get("auto_target")] * len(params)
        taus = [float(optimizer.state[p]["auto_target"]) if p in optimizer.state else math.nan for p in params]
        return [None if math.isnan(tau) else tau for tau in taus]
    target = as_schedule(group["target"], "target")(group["schedule_step"] - 1)
    if not group["relative_target"]:
        return [target] * len(params)
    if group["scope"] == "tensor":
        return [
            target * float(optimizer.state[p]["init_norm"]) if "init_norm" in optimizer.state.get(p, {}) else None
            for p in params
        ]
    return [target * group["init_norm"]] * len(params)


def weighted_adam_norms(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], states: Sequence[dict], beta2: float, eps: float
) -> list[tuple[Tensor, Tensor] | None]:
    """(‖g‖_{A⁻¹}, ‖θ‖_A) per tensor with A = √v̂ + ε from Adam's state (None: no state yet)."""
    present = [i for i, (g, s) in enumerate(zip(grads, states)) if g is not None and "exp_avg_sq" in s]
    sums: list[Tensor] = []  # Σ g²/a and Σ θ²·a over each tensor's local slice
    for i in present:
        state = states[i]
        step = float(state["step"])
        a = (local(state["exp_avg_sq"]).float() / (1 - beta2**step)).sqrt_().add_(eps)
        g32, p32 = local(grads[i]).float(), local(params[i]).float()  # type: ignore[arg-type]
        sums += [(g32.square() / a).sum(), (p32.square() * a).sum()]
    owners = [params[i] for i in present for _ in range(2)]
    full = iter(reduce_across_shards(sums, owners, "sum"))
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(params)
    for i in present:
        out[i] = (next(full).sqrt(), next(full).sqrt())
    return out


def value_ranges(tensors: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor] | None]:
    """(min, mean, max) of every element of each tensor, None for empty tensors."""
    nonempty = [t for t in tensors if t.numel()]
    lows, sums, highs = [], [], []
    for t in nonempty:
        piece = local(t).detach()
        if piece.numel():
            lo, hi = torch.aminmax(piece)
        else:  # an empty slice of a sharded tensor: neutral for min, max and sum
            lo, hi = piece.new_full((), float("inf")), piece.new_full((), float("-inf"))
        lows.append(lo.float())
        highs.append(hi.float())
        sums.append(piece.double().sum())
    lows = reduce_across_shards(lows, nonempty, "min")
    highs = reduce_across_shards(highs, nonempty, "max")
    sums = reduce_across_shards(sums, nonempty, "sum")
    ranges = iter(zip(lows, sums, highs))
    out: list[tuple[Tensor, Tensor, Tensor] | None] = []
    for t in tensors:
        if not t.numel():
            out.append(None)
            continue
        lo, total, hi = next(ranges)
        out.append((lo, (total / t.numel()).float(), hi))
    return out


def linf_norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """max |θ_i| per tensor (0 for empty tensors)."""
    pieces = [local(t) for t in tensors]
    nonempty = [p for p in pieces if p.numel()]
    norms = iter(torch._foreach_norm(nonempty, float("inf")) if nonempty else [])
    local_max = [next(norms).float() if p.numel() else torch.zeros((), device=p.device) for p in pieces]
    return reduce_across_shards(local_max, tensors, "max")


def update_norms(after: Sequence[Tensor], before: Sequence[Tensor]) -> list[Tensor]:
    """‖θ_t − θ_{t−1}‖ per tensor."""
    if not after:
        return []
    return tensor_norms(torch._foreach_sub(list(after), list(before)))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return numerator / denominator
