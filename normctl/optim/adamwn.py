"""AdamWN: Adam with weight norm control (Loshchilov 2023, Algorithm 1, line 13.c)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import rules
from ..schedules import Schedule, as_schedule
from ._adam import adam_state, adam_update
from ._base import (Batch, NormctlOptimizer, check_betas, check_bools, check_choice,
                    check_max_lr, check_nonnegative, check_unit_interval, is_real, peak_lr)

SCOPES = ("tensor", "group", "global")
CONTROL_AT = ("pre_step", "post_step")


@dataclass(frozen=True)
class _ControlPlan:
    """The values Eq. 3 uses for one group at this step: k_t and r_t (or τ_t if absolute)."""

    rate: float
    target: float


class AdamWN(NormctlOptimizer):
    r"""Adam with weight norm control: the weight norm is pulled toward a target, not toward 0.

    Every controlled tensor (or group, or the whole model, see ``scope``) gets Adam's step and
    the norm control of Eq. 3::

        θ ← θ − k_t · (1 − τ_t/‖θ‖) · θ,      τ_t = r_t · ‖θ_0‖

    where ‖θ_0‖ is recorded at the first step. Above the target the weights shrink, below it
    they grow; AdamW's decoupled weight decay is the special case τ = 0.

    Paper: Loshchilov, *Weight Norm Control*, 2023 (arXiv:2311.11446).

    Where to apply it: matrices and embeddings (``normctl.param_groups`` marks them with
    ``control=True``). Norm gains and biases are better left alone (the paper's appendix: also
    controlling LayerNorm parameters was worse); such groups set ``"control": False`` and get
    plain Adam, or AdamW's decoupled decay of type ``decay`` if their ``weight_decay`` is > 0.

    Args:
        params: parameters or param groups. Group keys: any argument below, plus ``control``
            (bool, default True) and ``weight_decay`` (used only by groups with control off).
        lr: γ, the Adam learning rate (units of parameter value per step; LR schedulers drive it).
        betas, eps: as in ``torch.optim.Adam``.
        target: r_t, the wanted ratio ‖θ_t‖/‖θ_0‖ (dimensionless, >= 0): a float or a schedule
            ``step -> float`` from :mod:`normctl.schedules`. With ``relative_target=False`` it is
            the norm τ_t itself, in the units of the parameters (needed for tensors initialised
            at zero, whose relative target would always be 0).
        rate: k_t, the fraction of the distance to the target closed per step, in [0, 1]; a float
            or a schedule. 1 snaps the norm onto the target; the paper uses 1e-2.
        rate_scaling: how k_t relates to the learning rate (the three forms of line 13):
            ``"none"`` (13.c, default) k_t = rate; ``"lr"`` (13.a, PyTorch AdamW) k_t = γ_t·rate;
            ``"lr_ratio"`` (13.b, original AdamW) k_t = (γ_t/γ_max)·rate. With ``target=0`` the
            last two are AdamW with ``weight_decay=rate`` in its PyTorch and original forms.
        scope: ``"tensor"`` — each tensor is pulled to r_t times its own initial norm;
            ``"group"`` — one norm over each param group's tensors; ``"global"`` — one norm over
            every controlled tensor of every group with this scope.
        relative_target: ``True`` (default) reads ``target`` as r_t, ``False`` as τ_t.
        control_at: ``"pre_step"`` (default) applies Eq. 3 to the weight before Adam's step, as
            torch's AdamW applies its decay, so the ``target=0`` case is bit-compatible with
            torch; ``"post_step"`` applies it after Adam's step, so ``rate=1`` is an exact
            retraction onto the target norm.
        weight_decay, decay: λ and the decay type (``"l2"``, ``"l1"``, ``"min"``) of AdamW's
            decoupled decay γ_t·D(θ) on groups with ``control=False``.
        max_lr: γ_max for ``rate_scaling="lr_ratio"``; see :func:`normctl.optim.peak_lr`.
        maximize: maximise the objective instead of minimising it.
        foreach: ``None``/``True`` use the ``torch._foreach_*`` path, ``False`` the per-tensor
            reference loop (same results).
        skip_nonfinite: if any gradient holds NaN/Inf, skip the whole step leaving params and
            state untouched and count it in ``group["skipped_steps"]``. Off by default, where
            (as in torch) non-finite gradients flow into the moments and weights.

    State per tensor: ``step``, ``exp_avg``, ``exp_avg_sq`` (as torch's Adam) and ``init_norm``
    (‖θ_0‖, 0-d) for tensor scope; group and global scopes keep ``init_norm`` in the param
    group. The schedule position is the group's ``schedule_step``. All of it is checkpointed.

    Raises ``ValueError`` at the first step if a relative target is asked of a tensor (or
    group) whose initial norm is 0: r·0 would silently decay it to 0 forever.
    """

    _own_group_keys = frozenset({"schedule_step", "init_norm"})

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, *, target: float | Schedule = 1.0, rate: float | Schedule = 1e-2,
                 rate_scaling: str = "none", scope: str = "tensor", relative_target: bool = True,
                 control_at: str = "pre_step", control: bool = True, weight_decay: float = 0.0,
                 decay: str = "l2", max_lr: float | None = None, maximize: bool = False,
                 foreach: bool | None = None, skip_nonfinite: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, target=target, rate=rate,
                        rate_scaling=rate_scaling, scope=scope, relative_target=relative_target,
                        control_at=control_at, control=control, weight_decay=weight_decay,
                        decay=decay, max_lr=max_lr, maximize=maximize, foreach=foreach,
                        skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)

    # -- construction -------------------------------------------------------------------------

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("eps", group["eps"])
        check_betas(group["betas"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_choice("decay", group["decay"], rules.DECAY_KINDS)
        check_choice("scope", group["scope"], SCOPES)
        check_choice("rate_scaling", group["rate_scaling"], rules.RATE_SCALINGS)
        check_choice("control_at", group["control_at"], CONTROL_AT)
        check_bools(group, "control", "relative_target", "maximize")
        check_max_lr(group["max_lr"])
        as_schedule(group["target"], "target")
        as_schedule(group["rate"], "rate")
        if is_real(group["target"]):
            check_nonnegative("target", group["target"])
        if is_real(group["rate"]):
            if group["rate_scaling"] == "none":
                check_unit_interval("rate", group["rate"])
            else:
                check_nonnegative("rate", group["rate"])

    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("schedule_step", 0)
        group.setdefault("init_norm", None)
        if group["control"] and group["scope"] == "global" and any(
            g is not group and g["scope"] == "global" and g["init_norm"] is not None
            for g in self.param_groups
        ):
            raise ValueError(
                "cannot add a controlled group with scope='global' after the first step: the "
                "global initial norm ‖θ_0‖ was recorded without it. Give the new group "
                "scope='tensor' or scope='group'."
            )

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        state.update(adam_state(param))
        if group["control"] and group["scope"] == "tensor":
            state["init_norm"] = rules.tensor_norms([param], foreach=False)[0]

    # -- the step -----------------------------------------------------------------------------

    def _update(self, batches: list[Batch]) -> None:
        plans = [self._plan(b.group) for b in batches]  # validates schedule values first
        self._check_initial_norms(batches)
        self._attach_state(batches)
        self._record_scope_norms()

        self._control(batches, plans, phase="pre_step")
        for batch in batches:
            group = batch.group
            foreach = self._use_foreach(group)
            if not group["control"]:
                rules.apply_decoupled_decay_(batch.params, group["decay"], group["lr"],
                                             group["weight_decay"], foreach=foreach)
            adam_update(batch.params, batch.grads, batch.states, group, foreach=foreach)
        self._control(batches, plans, phase="post_step")

        for group in self.param_groups:
            group["schedule_step"] += 1

    def _plan(self, group: dict) -> _ControlPlan | None:
        if not group["control"]:
            return None
        t = group["schedule_step"]
        rate = as_schedule(group["rate"], "rate")(t)
        target = as_schedule(group["target"], "target")(t)
        k = rules.control_rate(rate, group["rate_scaling"], group["lr"], peak_lr(group))
        if not (is_real(k) and 0 <= k <= 1):
            raise ValueError(f"rate k_t must be in [0, 1] at step {t}, got {k} "
                             f"(rate={rate}, rate_scaling={group['rate_scaling']!r})")
        if not (is_real(target) and target >= 0 and math.isfinite(target)):
            raise ValueError(f"target must be a finite number >= 0 at step {t}, got {target}")
        return _ControlPlan(rate=k, target=target)

    def _check_initial_norms(self, batches: list[Batch]) -> None:
        """Refuse a relative target on a zero-norm tensor before any state is created."""
        for batch in batches:
            group = batch.group
            if not (group["control"] and group["relative_target"] and group["scope"] == "tensor"):
                continue
            for i, p in enumerate(batch.params):
                if not self.state.get(p) and p.numel() > 0 and not p.any():
                    raise ValueError(
                        f"AdamWN: parameter {i} of a controlled group (shape {tuple(p.shape)}) has "
                        "initial norm 0, so its relative target r·‖θ_0‖ is 0. Exclude it "
                        "('control': False, as normctl.param_groups does for zero-initialised "
                        "biases), or give that group relative_target=False and an absolute target."
                    )

    def _record_scope_norms(self) -> None:
        """‖θ_0‖ of each group-scope group and of the global scope, at their first step."""
        for group in self.param_groups:
            if group["control"] and group["scope"] == "group" and group["init_norm"] is None:
                group["init_norm"] = _initial_norm([group], relative=group["relative_target"])
        global_groups = [g for g in self.param_groups if g["control"] and g["scope"] == "global"]
        if global_groups and global_groups[0]["init_norm"] is None:
            relative = any(g["relative_target"] for g in global_groups)
            norm = _initial_norm(global_groups, relative=relative)
            for group in global_groups:
                group["init_norm"] = norm

    def _control(self, batches: list[Batch], plans: list[_ControlPlan | None], *,
                 phase: str) -> None:
        """Apply Eq. 3 to every controlled group whose ``control_at`` matches this phase."""
        global_norm = None
        for batch, plan in zip(batches, plans):
            group = batch.group
            if plan is None or group["control_at"] != phase or not batch.params or plan.rate == 0:
                continue
            foreach = self._use_foreach(group)
            if plan.target == 0:  # plain decoupled decay: a Python float, exactly as torch
                factors: list[Tensor] | float = 1 - plan.rate
            elif group["scope"] == "tensor":
                norms = rules.tensor_norms(batch.params, foreach=foreach)
                factors = [rules.norm_control_factor(n, _target_norm(plan, group, s["init_norm"]),
                                                     plan.rate)
                           for n, s in zip(norms, batch.states)]
            else:
                if group["scope"] == "group":
                    norm = _current_norm([group], foreach)
                else:
                    if global_norm is None:
                        global_norm = _current_norm(
                            [g for g in self.param_groups if g["control"] and g["scope"] == "global"],
                            foreach)
                    norm = global_norm
                factor = rules.norm_control_factor(norm, _target_norm(plan, group, group["init_norm"]),
                                                   plan.rate)
                factors = [factor] * len(batch.params)
            _scale_(batch.params, factors, foreach=foreach)


def _target_norm(plan: _ControlPlan, group: dict, init_norm: Tensor | float) -> Tensor | float:
    """τ_t: r_t·‖θ_0‖ for a relative target, the target itself for an absolute one."""
    return plan.target * init_norm if group["relative_target"] else plan.target


def _current_norm(groups: list[dict], foreach: bool) -> Tensor:
    """One norm over every parameter of ``groups`` (with or without a gradient this step)."""
    params = [p for g in groups for p in g["params"]]
    return rules.combined_norm(rules.tensor_norms(params, foreach=foreach))


def _initial_norm(groups: list[dict], *, relative: bool) -> float:
    norm = float(_current_norm(groups, foreach=True))
    if relative and norm == 0 and any(p.numel() for g in groups for p in g["params"]):
        raise ValueError(
            "AdamWN: the controlled parameters of a group/global scope have initial norm 0, so "
            "the relative target r·‖θ_0‖ is 0. Use relative_target=False with an absolute target."
        )
    return norm


def _scale_(params: list[Tensor], factors: list[Tensor] | float, *, foreach: bool) -> None:
    """θ_i ← f_i·θ_i (a float f scales every tensor by the same Python number)."""
    if foreach:
        torch._foreach_mul_(params, factors)
    elif isinstance(factors, float):
        for p in params:
            p.mul_(factors)
    else:
        for p, f in zip(params, factors):
            p.mul_(f)
