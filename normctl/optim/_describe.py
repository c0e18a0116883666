"""``optimizer.describe()``: what each param group of the optimizer a user built gets, and why.

The optimizer-side twin of ``param_groups(model, verbose=True)``: Hugging Face and Lightning
users build the optimizer in a factory and never see the groups, so the optimizer says itself
which tensors are controlled (and toward what), decayed, corrected, or left to the base step.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ._auto_target import as_auto_target

# why a group holds what it holds, by the label param_groups or the plain call's split gives it
WHY = {
    "normalized": "normalised layer's weights (param_groups)",
    "decay": "weights (param_groups)",
    "output": "the output layer, left to AdamW's decay (param_groups)",
    "no_decay": "gains, biases, zero-initialised (param_groups)",
    "matrices": "2+ dimensions (plain call)",
    "vectors": "fewer than 2 dimensions: gains, biases (plain call)",
    "normalized_muon": "normalised hidden matrices (param_groups, muon=True)",
    "decay_muon": "hidden matrices (param_groups, muon=True)",
    "other tensors": "more than 2 dimensions (plain call)",
}


def controlled(group: dict[str, Any]) -> tuple[str, str]:
    """The role and setting of a group under norm control (AdamWN, NormControl)."""
    if not group["control"]:
        return decayed(group)
    target = group["target"]
    auto = as_auto_target(target)  # the group's target was validated: "auto", an AutoTarget, or none
    if auto is not None:
        if auto.total_steps:
            aim = f"AdamW's norm by step {auto.total_steps}"
        elif auto.without_length == "hold":
            aim = f"the norm AdamW had after {auto.steps} steps"
        else:
            aim = "AdamW's asymptotic norm"
        if auto.shared_ratio and group["scope"] == "tensor":
            aim += ", one ratio for every tensor"
        what = f"auto ({auto.rule}, λ_ref {auto.weight_decay:g}: {aim})"
    elif callable(target):
        what = f"r_t = {target!r}"
    else:
        what = f"r = {target:g}"
    if not callable(target) and target == 0:
        return "decayed", f"AdamW decay at rate {_rate(group)}"
    unit = "×‖θ_0‖" if group["relative_target"] and auto is None else ""
    return "controlled", f"{what}{unit}, {group['scope']} scope, rate {_rate(group)}"


def corrected(group: dict[str, Any]) -> tuple[str, str]:
    """The role and setting of a group under corrected decay (AdamC, SGDC, CorrectedDecay)."""
    if group.get("normalized") and group.get("weight_decay", 0) > 0:
        return "corrected", f"λ = {group['weight_decay']:g} × γ_t/γ_max"
    return decayed(group)


def muon(group: dict[str, Any]) -> tuple[str, str]:
    """The role and setting of a group of MuonAdamW: which step, and its decay."""
    kind, setting = decayed(group)
    return f"{'Muon' if group['muon'] else 'Adam'}, {kind}", setting


def muon_corrected(group: dict[str, Any]) -> tuple[str, str]:
    """The same for MuonC, whose normalised groups' decay is corrected."""
    kind, setting = corrected(group)
    return f"{'Muon' if group['muon'] else 'Adam'}, {kind}", setting


def decayed(group: dict[str, Any]) -> tuple[str, str]:
    weight_decay = group.get("weight_decay", 0)
    if weight_decay > 0:
        return "decayed", f"λ = {weight_decay:g}" + (f" ({group['decay']})" if group.get("decay", "l2") != "l2" else "")
    return "plain", "no decay"


def _rate(group: dict[str, Any]) -> str:
    rate = group["rate"]
    text = f"{rate:g}" if isinstance(rate, (int, float)) else repr(rate)
    return text + {"none": "", "lr": "·γ_t", "lr_ratio": "·γ_t/γ_max"}[group["rate_scaling"]]


def table(title: str, groups: list[dict[str, Any]], role) -> str:
    """One row per param group: its label, tensors and elements, what it gets, and why."""
    rows = []
    for i, group in enumerate(groups):
        params: list[Tensor] = group["params"]
        kind, setting = role(group)
        name = group.get("name") or f"group {i}"
        shapes = ", ".join(str(tuple(p.shape)) for p in params[:3]) + (", …" if len(params) > 3 else "")
        elements = sum(math.prod(p.shape) for p in params)
        why = WHY.get(group.get("name", ""), "as given")
        rows.append((name, f"{len(params)} ({elements:,})", kind, setting, why, shapes))
    header = ("group", "tensors (elements)", "gets", "setting", "why", "shapes")
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
