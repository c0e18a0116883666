"""Continuing a run another optimizer trained: ``optimizer.continue_from(adamw)``.

A run switched from AdamW to AdamC (or AdamWN, or a wrapper) mid-way keeps what both optimizers
mean by the same thing — Adam's moments and step count, SGD's momentum buffer — and initialises
what the new one adds from the weights as they are at the switch (‖θ_0‖ of a relative target is
then each tensor's norm at the switch). torch's ``load_state_dict`` cannot do this: it is for an
optimizer's own state, and normctl's refuses another optimizer's groups on purpose.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from ._state_check import _check_entry


def source_state(source: Optimizer | dict[str, Any], target: Optimizer) -> dict[str, Any]:
    """``source``'s state dict, checked to describe ``target``'s tensors: as many groups, as many
    tensors in each, per-element state of each tensor's shape. ``target`` must have no state yet."""
    owner = type(target).__name__
    state_dict = source.state_dict() if isinstance(source, Optimizer) else source
    if not (isinstance(state_dict, dict) and isinstance(state_dict.get("param_groups"), list)):
        raise TypeError(
            f"{owner}.continue_from needs a torch optimizer or its state_dict(), got {type(source).__name__}"
        )
    if target.state:
        raise ValueError(
            f"{owner}.continue_from needs a fresh optimizer (no step taken): this one has state, which it would replace"
        )
    saved = state_dict["param_groups"]
    sizes, here = [len(g["params"]) for g in saved], [len(g["params"]) for g in target.param_groups]
    if sizes != here:
        raise ValueError(
            f"{owner}.continue_from: the source's param groups hold {sizes} tensors, this optimizer's {here}: "
            "build both over the same parameters, group by group"
        )
    for g, (saved_group, group) in enumerate(zip(saved, target.param_groups)):
        for index, param in zip(saved_group["params"], group["params"]):
            for key, value in state_dict.get("state", {}).get(index, {}).items():
                _check_entry(owner, g, index, key, value, param)
    return state_dict


def saved_entries(state_dict: dict[str, Any], groups: list[dict]) -> list[tuple[Tensor, dict[str, Any], dict]]:
    """(parameter, its saved state, its group) for every tensor the source had state for."""
    state = state_dict.get("state", {})
    return [
        (param, state[index], group)
        for saved, group in zip(state_dict["param_groups"], groups)
        for index, param in zip(saved["params"], group["params"])
        if state.get(index)
    ]


def take_peak_lr(state_dict: dict[str, Any], groups: list[dict]) -> bool:
    """The peak lr a scheduler recorded on the source (``initial_lr``) carried to groups that have
    none: γ_max of a corrected decay is the schedule's peak, not the lr at the switch."""
    taken = False
    for saved, group in zip(state_dict["param_groups"], groups):
        if saved.get("initial_lr") is not None and group.get("initial_lr") is None:
            group["initial_lr"] = saved["initial_lr"]
            taken = True
    return taken


def as_like(value: Any, like: Any) -> Any:
    """``value`` in ``like``'s dtype and device (a 0-d step count stays where it was kept)."""
    if isinstance(value, Tensor) and isinstance(like, Tensor):
        return value.to(device=like.device, dtype=like.dtype, copy=True).reshape(like.shape)
    return value


def summary(owner: str, source: str, tensors: int, kept: set[str], initialised: set[str], peak: bool) -> str:
    """What the switch did, in a line or two."""
    lines = [f"{owner} continues {source}'s state: {tensors} tensors"]
    lines.append(f"  kept: {', '.join(sorted(kept)) or 'nothing'}")
    if initialised:
        what = ", ".join(sorted(initialised))
        lines.append(f"  initialised now: {what} (from the weights at the switch: ‖θ_0‖ is each norm now)")
    if peak:
        lines.append("  the source's initial_lr (its scheduler's peak) taken as γ_max")
    return "\n".join(lines)
