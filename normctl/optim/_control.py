"""Eq. 3 norm control as a component: used by AdamWN and by the NormControl wrapper.

The functions read and write only the param groups and a per-parameter ``state`` mapping
they are given, so the same code controls AdamWN's own state and a wrapper's.
Group keys: ``target``, ``rate``, ``rate_scaling``, ``scope``, ``relative_target``,
``control_at``, ``control``, ``max_lr`` (read), ``schedule_step`` and ``init_norm`` (written).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .. import distributed, rules
from ..schedules import as_schedule
from . import _auto_target as auto_target
from ._auto_target import AutoTarget, as_auto_target
from ._base import (
    Batch,
    check_bools,
    check_choice,
    check_max_lr,
    check_nonnegative,
    check_peak_lr_known,
    check_unit_interval,
    is_real,
    peak_lr,
)

SCOPES = ("tensor", "group", "global")
CONTROL_AT = ("pre_step", "post_step")
CONTROL_DEFAULTS = dict(
    target=1.0,
    rate=1e-2,
    rate_scaling="none",
    scope="tensor",
    relative_target=True,
    control_at="pre_step",
    control=True,
    max_lr=None,
)
CONTROL_GROUP_KEYS = frozenset({"schedule_step", "init_norm", "auto_target"})


class TensorNorms(Protocol):
    def __call__(self, tensors: Sequence[Tensor], *, foreach: bool = True) -> list[Tensor]: ...


@dataclass(frozen=True)
class ControlPlan:
    """The values Eq. 3 uses for one group at this step: k_t and r_t (or τ_t if absolute)."""

    rate: float
    target: float


def validate_control_group(group: Mapping[str, Any]) -> None:
    check_choice("scope", group["scope"], SCOPES)
    check_choice("rate_scaling", group["rate_scaling"], rules.RATE_SCALINGS)
    check_choice("control_at", group["control_at"], CONTROL_AT)
    check_bools(group, "control", "relative_target")
    check_max_lr(group["max_lr"])
    check_peak_lr_known(group, group["control"] and group["rate_scaling"] == "lr_ratio", 'rate_scaling="lr_ratio"')
    if as_auto_target(group["target"]) is None:
        as_schedule(group["target"], "target")
    as_schedule(group["rate"], "rate")
    if is_real(group["target"]):
        check_nonnegative("target", group["target"])
    if is_real(group["rate"]):
        if group["rate_scaling"] == "none":
            check_unit_interval("rate", group["rate"])
        else:
            check_nonnegative("rate", group["rate"])


def init_control_group(group: dict[str, Any], all_groups: list[dict], owner: str) -> None:
    if group["control"]:
        distributed.check_supported(group["params"], owner)
    group.setdefault("schedule_step", 0)
    group.setdefault("init_norm", None)
    if (
        group["control"]
        and group["scope"] == "global"
        and any(g is not group and g.get("scope") == "global" and g.get("init_norm") is not None for g in all_groups)
    ):
        raise ValueError(
            "cannot add a controlled group with scope='global' after the first step: the "
            "global initial norm ‖θ_0‖ was recorded without it. Give the new group "
            "scope='tensor' or scope='group'."
        )


def plan(group: dict) -> ControlPlan | None:
    """k_t and r_t for this step, validated; None for groups without control."""
    if not group["control"]:
        return None
    t = group["schedule_step"]
    rate = as_schedule(group["rate"], "rate")(t)
    auto = as_auto_target(group["target"])
    target = auto.multiple if auto is not None else as_schedule(group["target"], "target")(t)
    k = rules.control_rate(rate, group["rate_scaling"], group["lr"], peak_lr(group))
    # k is a tensor only under torch.compile with a tensor lr (rate_scaling "lr"/"lr_ratio"), where
    # reading it on the host would break the graph; eager steps of the same run check it
    if not (isinstance(k, Tensor) or (is_real(k) and 0 <= k <= 1)):
        raise ValueError(
            f"rate k_t must be in [0, 1] at step {t}, got {k} (rate={rate}, rate_scaling={group['rate_scaling']!r})"
        )
    if not (is_real(target) and target >= 0 and math.isfinite(target)):
        raise ValueError(f"target must be a finite number >= 0 at step {t}, got {target}")
    return ControlPlan(rate=k, target=target)


def warn_zero_initial_norms(batches: list[Batch], state: Mapping[Tensor, dict], owner: str) -> None:
    """Say once which tensors about to get their first state start at norm 0 under a relative
    target (zero-initialised biases and norm shifts, from ``model.parameters()``): r·‖θ_0‖ = 0
    would decay them to 0 forever, so they are left uncontrolled (:func:`uncontrolled_factor`)."""
    zero = []
    for g, batch in enumerate(batches):
        group = batch.group
        if not (group["control"] and group["relative_target"] and group["scope"] == "tensor"):
            continue
        if (is_real(group["target"]) and group["target"] == 0) or as_auto_target(group["target"]) is not None:
            continue  # AdamW's decay, or a target measured in the run: ‖θ_0‖ plays no part
        fresh = [p for p in batch.params if "init_norm" not in state.get(p, {}) and p.numel() > 0]
        norms = rules.tensor_norms(fresh) if fresh else []
        names = group.get("param_names")
        for p, norm in zip(fresh, norms):
            if norm == 0:
                where = next(j for j, q in enumerate(group["params"]) if q is p)
                zero.append(names[where] if names else f"group {g} tensor {where} {tuple(p.shape)}")
    if zero:
        shown = ", ".join(zero[:8]) + (f" and {len(zero) - 8} more" if len(zero) > 8 else "")
        warnings.warn(
            f"{owner}: {len(zero)} tensor(s) start at norm 0 ({shown}); a relative target r·‖θ_0‖ would decay "
            "them to 0, so they are left uncontrolled (Adam's step, and the group's weight_decay as AdamW "
            "decay if set). normctl.param_groups(model) puts such tensors in an uncontrolled group for you.",
            stacklevel=5,
        )


def uncontrolled_factor(group: dict) -> float:
    """What a controlled group's tensor with ‖θ_0‖ = 0 gets instead of Eq. 3: AdamW's decay
    θ ← (1 − γλ)·θ with the group's ``weight_decay`` (1: plain Adam)."""
    return 1.0 - group["lr"] * group["weight_decay"]


def init_tensor_state(param: Tensor, state: dict, group: dict) -> None:
    """Record ‖θ_0‖ of a tensor-scope controlled parameter at its first step (and create the
    measurements of an automatic target)."""
    if group["control"] and group["scope"] == "tensor" and "init_norm" not in state:
        state["init_norm"] = rules.tensor_norms([param], foreach=False)[0]
    auto_target.init_tensor_state(param, state, group)


def record_scope_norms(groups: list[dict]) -> None:
    """‖θ_0‖ of each group-scope group and of the global scope, at their first step."""
    for group in groups:
        if group["control"] and group["scope"] == "group" and group["init_norm"] is None:
            group["init_norm"] = _initial_norm([group], relative=group["relative_target"])
    scope = global_groups(groups)
    if scope and scope[0]["init_norm"] is None:
        relative = any(g["relative_target"] for g in scope)
        norm = _initial_norm(scope, relative=relative)
        for group in scope:
            group["init_norm"] = norm


def control_factors(
    batches: list[Batch],
    plans: list[ControlPlan | None],
    groups: list[dict],
    *,
    phase: str,
    tensor_norms: TensorNorms = rules.tensor_norms,
) -> list[list[Tensor] | float | None]:
    """Eq. 3's factor f for each batch whose group is controlled at ``phase`` (None: nothing to
    do): a float when it is one Python number (target 0), else one 0-d tensor per tensor.

    All norms are read before anything is scaled, so group and global scopes see the
    weights of one moment. ``tensor_norms`` measures them (AdamWN passes the norms its
    one-pass step kept)."""
    global_norm: list[Tensor] = []  # measured once per call, for every global-scope group

    def scope_norm(group: dict, foreach: bool) -> Tensor:
        """‖θ‖ of a group- or global-scope group."""
        if group["scope"] == "group":
            return current_norm([group], foreach, tensor_norms)
        if not global_norm:
            global_norm.append(current_norm(global_groups(groups), foreach, tensor_norms))
        return global_norm[0]

    out: list[list[Tensor] | float | None] = []
    for batch, step_plan in zip(batches, plans):
        group = batch.group
        if step_plan is None or group["control_at"] != phase or not batch.params or step_plan.rate == 0:
            out.append(None)
            continue
        foreach = group.get("foreach") is not False
        auto = as_auto_target(group["target"])
        if auto is not None:
            measure = functools.partial(scope_norm, group, foreach)
            out.append(_auto_factors(batch, step_plan, auto, measure, tensor_norms, foreach))
        elif step_plan.target == 0:  # plain decoupled decay: a Python float, exactly as torch
            out.append(1 - step_plan.rate)
        elif group["scope"] == "tensor":
            out.append(_tensor_factors(batch, step_plan, tensor_norms(batch.params, foreach=foreach)))
        elif group["relative_target"] and group["init_norm"] == 0:  # warned when it was recorded
            out.append(uncontrolled_factor(group))
        else:
            target = _target_norm(step_plan, group, group["init_norm"])
            factor = rules.norm_control_factor(scope_norm(group, foreach), target, step_plan.rate)
            out.append([factor] * len(batch.params))
    return out


def _auto_factors(
    batch: Batch,
    step_plan: ControlPlan,
    auto: AutoTarget,
    scope_norm: Callable[[], Tensor],
    tensor_norms: TensorNorms,
    foreach: bool,
) -> list[Tensor] | float:
    """Eq. 3 toward the measured target; while it is measured, the rule's own step (AdamW's decay
    for the equilibrium rule, nothing for the inflection rule). ``scope_norm`` measures a group-
    or global-scope group's norm (only once its target is set)."""
    group, measuring = batch.group, auto_target.measuring_factor(auto, batch.group)
    if group["scope"] != "tensor":
        tau = group.get("auto_target")
        if tau is None:
            return measuring
        return [rules.norm_control_factor(scope_norm(), tau, step_plan.rate)] * len(batch.params)
    taus = torch.stack([s["auto_target"] for s in batch.states])
    if bool(taus.isnan().all()):
        return measuring
    norms = torch.stack(tensor_norms(batch.params, foreach=foreach))
    factors = rules.norm_control_factor(norms, taus.to(norms), step_plan.rate)
    return list(torch.where(taus.isnan(), torch.tensor(measuring, dtype=factors.dtype), factors))


def apply_control(batches: list[Batch], plans: list[ControlPlan | None], groups: list[dict], *, phase: str) -> None:
    """Apply Eq. 3 to every controlled group whose ``control_at`` is ``phase``."""
    for batch, factors in zip(batches, control_factors(batches, plans, groups, phase=phase)):
        if factors is not None:
            scale_(batch.params, factors, foreach=batch.group.get("foreach") is not False)
            scale_idle_(batch, factors)


def scale_idle_(batch: Batch, factors: list[Tensor] | float) -> None:
    """Group and global scope: the tensors of the group with no gradient this step are part of
    the norm Eq. 3 acts on, so they take the scope's factor too (``rate=1`` post-step is then an
    exact retraction). Tensor scope, and target 0 (AdamW's decay, which torch applies only to
    tensors with a gradient), leave them alone."""
    group = batch.group
    if group["scope"] == "tensor" or isinstance(factors, float) or len(batch.params) == len(group["params"]):
        return
    stepped = {id(p) for p in batch.params}
    idle = [p for p in trainable(group["params"]) if id(p) not in stepped]
    if idle:
        scale_(idle, [factors[0]] * len(idle), foreach=group.get("foreach") is not False)


def as_weight_decay(factors: list[Tensor] | float, lr: float) -> list[float] | float:
    """The AdamW decay λ with θ·(1 − γλ) = f·θ, so a fused AdamW kernel applies Eq. 3."""
    if isinstance(factors, float):
        return (1 - factors) / lr
    if all(f is factors[0] for f in factors):  # group/global scope: one factor, one fused call
        return (1 - float(factors[0])) / lr
    return [(1 - f) / lr for f in torch.stack([f.double() for f in factors]).tolist()]


def advance(groups: list[dict]) -> None:
    for group in groups:
        group["schedule_step"] += 1


def global_groups(groups: list[dict]) -> list[dict]:
    return [g for g in groups if g["control"] and g["scope"] == "global"]


def _target_norm(step_plan: ControlPlan, group: dict, init_norm: Tensor | float) -> Tensor | float:
    """τ_t: r_t·‖θ_0‖ for a relative target, the target itself for an absolute one."""
    return step_plan.target * init_norm if group["relative_target"] else step_plan.target


def target_norm(step_plan: ControlPlan, group: dict) -> float:
    """τ_t of a group- or global-scope group (its recorded ‖θ_0‖ times r_t, if relative)."""
    return float(_target_norm(step_plan, group, group["init_norm"]))


def _tensor_factors(batch: Batch, step_plan: ControlPlan, norms: list[Tensor]) -> list[Tensor]:
    """Tensor scope: each tensor's factor, computed as one vector when the norms share a device."""
    group = batch.group
    if len({n.device for n in norms}) > 1:  # tensors spread over devices (model parallel)
        return [
            rules.norm_control_factor(n, _target_norm(step_plan, group, s["init_norm"]), step_plan.rate)
            if not (group["relative_target"] and s["init_norm"] == 0)
            else torch.tensor(uncontrolled_factor(group), device=n.device)
            for n, s in zip(norms, batch.states)
        ]
    norms_vector = torch.stack(norms)
    if not group["relative_target"]:
        return list(rules.norm_control_factor(norms_vector, step_plan.target, step_plan.rate))
    init_norms = torch.stack([s["init_norm"] for s in batch.states]).to(norms_vector)
    factors = rules.norm_control_factor(norms_vector, step_plan.target * init_norms, step_plan.rate)
    return list(torch.where(init_norms == 0, uncontrolled_factor(group), factors))


def trainable(params: list[Tensor]) -> list[Tensor]:
    """The tensors a group or global scope holds the norm of: those that require a gradient. A
    frozen tensor (``requires_grad=False``: fine-tuning's frozen layers) is never changed — as
    torch.optim leaves it — so it is no part of the norm Eq. 3 acts on either."""
    return [p for p in params if p.requires_grad]


def current_norm(groups: list[dict], foreach: bool, tensor_norms: TensorNorms = rules.tensor_norms) -> Tensor:
    """One norm over every trainable parameter of ``groups`` (with or without a gradient this step)."""
    params = trainable([p for g in groups for p in g["params"]])
    return rules.combined_norm(tensor_norms(params, foreach=foreach))


def _initial_norm(groups: list[dict], *, relative: bool) -> float:
    norm = float(current_norm(groups, foreach=True))
    if relative and norm == 0 and any(p.numel() for g in groups for p in trainable(g["params"])):
        warnings.warn(
            f"a {groups[0]['scope']}-scope set of controlled tensors starts at norm 0, so its relative target "
            "r·‖θ_0‖ would be 0: it is left uncontrolled (Adam's step, and weight_decay as AdamW decay if set). "
            "Give it relative_target=False and an absolute target to control it.",
            stacklevel=6,
        )
    return norm


def scale_(params: list[Tensor], factors: list[Tensor] | float, *, foreach: bool) -> None:
    """θ_i ← f_i·θ_i (a float f scales every tensor by the same Python number)."""
    if foreach:
        torch._foreach_mul_(params, factors)
    elif isinstance(factors, float):
        for p in params:
            p.mul_(factors)
    else:
        for p, f in zip(params, factors):
            p.mul_(f)
