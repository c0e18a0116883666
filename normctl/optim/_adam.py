"""Adam's moment update and bias-corrected step (lines 6–12 of Algorithm 1, Loshchilov 2023).

Both AdamWN and AdamC are Adam plus a different line 13, so they share this step. The two
functions perform the same floating-point operations in the same order as
``torch.optim.AdamW``'s single-tensor and foreach paths, which is what makes the special cases
(AdamWN with target 0, AdamC at constant lr) bit-compatible with torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def adam_step_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float,
               *, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """θ ← θ − γ·m̂/(√v̂ + ε) for one tensor; m and v are updated in place."""
    exp_avg.lerp_(grad, 1 - beta1)                                  # m ← β1·m + (1−β1)·g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)    # v ← β2·v + (1−β2)·g²
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)  # √v̂ + ε
    param.addcdiv_(exp_avg, denom, value=-step_size)


def adam_step_foreach_(params: Sequence[Tensor], grads: Sequence[Tensor],
                       exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor],
                       steps: Sequence[float], *, lr: float, beta1: float, beta2: float,
                       eps: float) -> None:
    """:func:`adam_step_` for a list of tensors, one ``torch._foreach_*`` kernel per line."""
    if not params:
        return
    params, grads, exp_avgs, exp_avg_sqs = map(list, (params, grads, exp_avgs, exp_avg_sqs))
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_sizes = [(lr / (1 - beta1**s)) * -1 for s in steps]
    bias_correction2_sqrt = [(1 - beta2**s) ** 0.5 for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def adam_state(param: Tensor) -> dict[str, Tensor]:
    """Fresh Adam state, with torch's keys and dtypes (``step`` a 0-d fp32 tensor)."""
    return {
        "step": torch.tensor(0.0, dtype=torch.float32),
        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
    }


def advance_steps(states: Sequence[dict]) -> list[float]:
    """Increment each tensor's Adam step counter and return the new values."""
    steps = []
    for state in states:
        state["step"] += 1
        steps.append(float(state["step"]))
    return steps


def adam_update(params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[dict],
                group: dict, *, foreach: bool) -> None:
    """Advance the step counters and apply Adam's step to every tensor of a group."""
    steps = advance_steps(states)
    beta1, beta2 = group["betas"]
    hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"])
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    if foreach:
        adam_step_foreach_(params, grads, exp_avgs, exp_avg_sqs, steps, **hyper)
    else:
        for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            adam_step_(p, g, m, v, t, **hyper)
