"""Lion: the sign-based optimizer of Chen et al. (2023), with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import rules
from ._base import Batch, NormctlOptimizer, check_betas, check_bools, check_lr, check_nonnegative


def lion_step_(param, grad, exp_avg, *, lr: float, beta1: float, beta2: float) -> None:
    """θ ← θ − γ·sign(β1·m + (1−β1)·g);  m ← β2·m + (1−β2)·g."""
    update = exp_avg.lerp(grad, 1 - beta1).sign_()
    param.add_(update, alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


class Lion(NormctlOptimizer):
    """Lion (*Symbolic Discovery of Optimization Algorithms*, Chen et al. 2023).

    Every coordinate moves by exactly ±γ per step, so the update norm is γ·sqrt(n): use an lr
    3–10× smaller than AdamW's and a weight decay 3–10× larger (same γλ product). Decay is
    AdamW's decoupled θ ← θ − γ·D(θ) (``decay`` types l2/l1/min), which makes it a natural inner
    optimizer for :class:`normctl.NormControl` (``lion+wn``) and :class:`normctl.CorrectedDecay`.

    State per tensor: ``exp_avg``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        decay: str = "l2",
        maximize: bool = False,
        foreach: bool | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            decay=decay,
            maximize=maximize,
            foreach=foreach,
            skip_nonfinite=skip_nonfinite,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_betas(group["betas"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bools(group, "maximize")
        if group["decay"] not in rules.DECAY_KINDS:
            raise ValueError(f"decay must be one of {rules.DECAY_KINDS}, got {group['decay']!r}")

    def _init_state(self, param, state: dict, group: dict) -> None:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _update(self, batches: list[Batch]) -> None:
        self._attach_state(batches)
        for batch in batches:
            group = batch.group
            beta1, beta2 = group["betas"]
            rules.apply_decoupled_decay_(
                batch.params, group["decay"], group["lr"], group["weight_decay"], foreach=self._use_foreach(group)
            )
            for p, g, state in zip(batch.params, batch.grads, batch.states):
                lion_step_(p, g, state["exp_avg"], lr=group["lr"], beta1=beta1, beta2=beta2)
