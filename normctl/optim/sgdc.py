"""SGDC: SGD (with momentum) and corrected weight decay (Defazio 2025, §5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import rules
from ..distributed import local
from ._adam import buckets
from ._base import (
    Batch,
    NormctlOptimizer,
    check_bools,
    check_lr,
    check_nonnegative,
    check_unit_interval,
    corrected_lr_ratio,
    warn_if_nothing_normalized,
)
from .adamc import check_corrected_decay_keys

# Before torch 2.14, torch's CPU fused SGD left every whole SIMD vector of a bfloat16 or float16
# tensor without its update and read the momentum buffer as float32 (pytorch/pytorch#191763):
# silently wrong weights. SGDC never hands it such tensors; they take the foreach path.
FUSED_SGD_LOW_PRECISION_FIXED_IN = "2.14"  # compared as a version: torch.__version__ is a TorchVersion


def fused_sgd_defect(params: list[Tensor]) -> str | None:
    """Why torch's fused SGD must not step these tensors on this torch (None: it may)."""
    low_precision_cpu = any(p.device.type == "cpu" and p.dtype in (torch.bfloat16, torch.float16) for p in params)
    if low_precision_cpu and torch.__version__ < FUSED_SGD_LOW_PRECISION_FIXED_IN:
        return (
            f"torch {torch.__version__}'s fused SGD leaves bfloat16/float16 CPU weights without most of their "
            "update (pytorch/pytorch#191763, fixed in torch 2.14): use foreach=True, float32 weights, or "
            "torch >= 2.14"
        )
    return None


class SGDC(NormctlOptimizer):
    r"""``torch.optim.SGD`` whose weight decay follows the schedule on normalised layers.

    By default the decay is folded into the gradient as torch's SGD does it, with λ replaced
    by λ̂_t = λ·γ_t/γ_max on groups with ``normalized=True``::

        g ← g + λ̂_t·θ;   b ← μ·b + (1 − τ)·g;   θ ← θ − γ_t·b     (normalised layers)

    so the steady state ‖g‖/‖θ‖ = sqrt(2λ(1−μ)/γ_t) of torch's SGD with momentum μ (effective
    lr γ/(1−μ)) becomes the constant sqrt(2λ(1−μ)/γ_max). ``decoupled_weight_decay=True``
    instead shrinks the pre-step weight, AdamW-style: θ ← θ − γ_t·λ̂_t·θ − γ_t·b.

    Paper: Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025 (ResNet-50 on
    ImageNet: SGD momentum 0.9, lr 0.1, wd 1e-4, cosine).

    Args:
        lr, momentum, dampening, nesterov, maximize: as in ``torch.optim.SGD``.
        weight_decay: λ, exactly as in ``torch.optim.SGD``; at the peak lr nothing changes.
        max_lr, normalized, decay, foreach, fused, skip_nonfinite: as in :class:`normctl.AdamC`;
            the fused path is torch's fused SGD kernel with λ rescaled per step.
        decoupled_weight_decay: apply the decay to the weight instead of the gradient.

    Equals ``torch.optim.SGD`` whenever γ_t = γ_max (e.g. a constant lr), with or without
    momentum, for the default coupled form.

    State per tensor: ``momentum_buffer`` (when ``momentum > 0``), as torch's SGD.
    """

    _describe_role = "corrected"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        *,
        nesterov: bool = False,
        max_lr: float | None = None,
        normalized: bool = False,
        decay: str = "l2",
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            max_lr=max_lr,
            normalized=normalized,
            decay=decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
        )
        super().__init__(params, defaults)
        warn_if_nothing_normalized(self)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_unit_interval("momentum", group["momentum"])
        check_unit_interval("dampening", group["dampening"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_corrected_decay_keys(group)
        check_bools(group, "nesterov", "decoupled_weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    # the momentum buffer is created from the first gradient, as in torch; a zero-lr,
    # zero-gradient step (torch.distributed.checkpoint's state initialisation) is a no-op
    _eager_state = False
    _lazy_state_keys = frozenset({"momentum_buffer"})

    def _init_state(self, param, state: dict, group: dict) -> None:
        pass

    def _fused_refusal(self, params: list[Tensor]) -> str | None:
        return super()._fused_refusal(params) or fused_sgd_defect(params)

    def _update(self, batches: list[Batch]) -> None:
        self._attach_state(batches)
        for batch in batches:
            if batch.params:
                self._sgd_step(batch)

    def _sgd_step(self, batch: Batch) -> None:
        group, params = batch.group, batch.params
        foreach = self._use_foreach(group)
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        scale = corrected_lr_ratio(group)
        if group["decay"] == "l2" and self._use_fused(group, params):
            self._fused_sgd_step(batch, wd * scale)
            return
        if group["decoupled_weight_decay"]:
            rules.apply_decoupled_decay_(params, group["decay"], lr * scale, wd, foreach=foreach)
            grads = list(batch.grads)
        else:
            grads = rules.add_coupled_decay(batch.grads, params, group["decay"], wd, scale=scale, foreach=foreach)
        if momentum != 0:
            bufs = []
            for state, g in zip(batch.states, grads):
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(g, alpha=1 - group["dampening"])
                bufs.append(state["momentum_buffer"])
            if group["nesterov"]:
                grads = (
                    [*torch._foreach_add(grads, bufs, alpha=momentum)]
                    if foreach
                    else [g.add(b, alpha=momentum) for g, b in zip(grads, bufs)]
                )
            else:
                grads = bufs
        if isinstance(lr, Tensor):  # a compiled step's tensor lr: alpha takes numbers only
            torch._foreach_add_(params, torch._foreach_mul(grads, -lr))
        elif foreach:
            torch._foreach_add_(params, grads, alpha=-lr)
        else:
            for p, g in zip(params, grads):
                p.add_(g, alpha=-lr)

    def _fused_sgd_step(self, batch: Batch, weight_decay: float) -> None:
        """torch's fused SGD kernel; decoupled decay is applied to the weight first."""
        group = batch.group
        if group["decoupled_weight_decay"]:
            rules.apply_decoupled_decay_(batch.params, "l2", group["lr"], weight_decay)
            weight_decay = 0.0
        momentum = group["momentum"]
        for params, grads, states in buckets(batch.params, batch.grads, batch.states):
            # the kernel runs on the rank-local data: DTensor has no rule for it
            sharded = not all(type(p) in (Tensor, torch.nn.Parameter) for p in params)
            if sharded:
                params, grads = [local(p) for p in params], [local(g) for g in grads]
            calls: list[tuple[list[Tensor], list[Tensor], list[Tensor], bool]]
            if momentum == 0:
                calls = [(params, grads, [], False)]
            else:  # tensors without a momentum buffer yet take the kernel's first-step path
                new = {i for i, s in enumerate(states) if s.get("momentum_buffer") is None}
                for i in new:
                    states[i]["momentum_buffer"] = torch.empty_like(grads[i])
                bufs = [s["momentum_buffer"] for s in states]
                if sharded:
                    bufs = [local(b) for b in bufs]
                calls = [(params, grads, bufs, False)]
                if new:  # two calls: the new buffers first, then the others
                    calls = []
                    for first in (True, False):
                        ids = [i for i in range(len(params)) if (i in new) == first]
                        if ids:
                            calls.append(
                                ([params[i] for i in ids], [grads[i] for i in ids], [bufs[i] for i in ids], first)
                            )
            for chosen_params, chosen_grads, chosen_bufs, first_step in calls:
                torch._fused_sgd_(
                    chosen_params,
                    chosen_grads,
                    chosen_bufs,
                    weight_decay=weight_decay,
                    momentum=momentum,
                    lr=group["lr"],
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    maximize=False,
                    is_first_step=first_step,
                    grad_scale=None,
                    found_inf=None,
                )
