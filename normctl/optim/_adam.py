"""Adam's moment update and bias-corrected step (lines 6–12 of Algorithm 1, Loshchilov 2023).

Both AdamWN and AdamC are Adam plus a different line 13, so they share this step. The two
functions perform the same floating-point operations in the same order as
``torch.optim.AdamW``'s single-tensor and foreach paths, which is what makes the special cases
(AdamWN with target 0, AdamC at constant lr) bit-compatible with torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: float,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """θ ← θ − γ·m̂/(√v̂ + ε) for one tensor; m and v are updated in place."""
    exp_avg.lerp_(grad, 1 - beta1)  # m ← β1·m + (1−β1)·g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v ← β2·v + (1−β2)·g²
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)  # √v̂ + ε
    param.addcdiv_(exp_avg, denom, value=-step_size)


def adam_step_foreach_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
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
    if torch.compiler.is_compiling():
        # the step sizes are tensors here (step counters, a tensor lr): divided into the
        # denominators, as torch's capturable Adam does, since addcdiv takes numbers as its scale
        torch._foreach_div_(denom, step_sizes)
        torch._foreach_addcdiv_(params, exp_avgs, denom)
    else:
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def adam_state(param: Tensor, *, fused: bool = False) -> dict[str, Tensor]:
    """Fresh Adam state, with torch's keys and dtypes (``step`` a 0-d fp32 tensor, on the
    parameter's device for the fused kernels, on the CPU otherwise)."""
    return {
        "step": torch.tensor(0.0, dtype=torch.float32, device=param.device if fused else None),
        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
    }


def advance_steps(states: Sequence[dict]) -> list[Any]:
    """Increment each tensor's Adam step counter and return the new values: numbers in an eager
    step, the counters themselves under ``torch.compile`` (reading them on the host would break
    the graph every step, as torch's ``_get_value`` avoids too)."""
    for state in states:
        state["step"] += 1
    if torch.compiler.is_compiling():
        return [state["step"] for state in states]
    return [float(state["step"]) for state in states]


def adam_update(
    params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[dict], group: dict, *, foreach: bool
) -> None:
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


def fused_supported(params: Sequence[Tensor]) -> bool:
    """torch's fused Adam/SGD kernels run on CPU and CUDA floating-point tensors."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


# What the one-pass AdamWN kernels take (CPU and CUDA): bfloat16 computed in float32, as
# torch's fused AdamW does.
ONE_PASS_DTYPES = (torch.float32, torch.bfloat16)
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # no DTensor or other subclass


def suit_one_pass(
    params: Sequence[Tensor],
    states: Sequence[dict],
    keys: Sequence[str] = ("exp_avg", "exp_avg_sq"),
    starts: Sequence[bool] | None = None,
) -> bool:
    """Plain contiguous tensors (no DTensor or other subclass) of one device and one dtype of
    ``ONE_PASS_DTYPES``, with their state tensors ``keys`` (Adam's moments by default) alike:
    what a one-pass kernel can walk as flat arrays. ``starts[i]``: tensor i's state is yet to be
    made, so only the tensor itself is checked."""
    dtype = params[0].dtype
    if dtype not in ONE_PASS_DTYPES or not all(type(p) in PLAIN_TENSORS for p in params):
        return False
    tensors: list[Any] = list(params)
    for i, s in enumerate(states):
        if starts is None or not starts[i]:
            tensors += [s.get(key) for key in keys]
    if params[0].device.type == "cpu":
        from . import _one_pass_cpu  # the C++ test, where the CPU kernel is loaded (it imports this module)

        verdict = _one_pass_cpu.alike(tensors)
        if verdict is not None:
            return verdict
    if not all(isinstance(t, Tensor) for t in tensors):
        return False
    # one set per property instead of a chain of tests per tensor: 161 tensors (ResNet-50) each step
    return (
        {t.device for t in tensors} == {params[0].device}
        and {t.dtype for t in tensors} == {dtype}
        and all(t.is_contiguous() for t in tensors)
    )


def buckets(*lists: Sequence[Any]) -> list[tuple[list[Any], ...]]:
    """Split parallel lists by (device, dtype) of the first: fused kernels take one of each."""
    if len({(t.device, t.dtype) for t in lists[0]}) <= 1:  # the usual case, without a per-item loop
        return [tuple(list(items) for items in lists)] if lists[0] else []
    out: dict[tuple[torch.device, torch.dtype], tuple[list[Any], ...]] = {}
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype)
        bucket = out.setdefault(key, tuple([] for _ in lists))
        for target, item in zip(bucket, items):
            target.append(item)
    return list(out.values())


def fused_adamw_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict],
    group: dict,
    *,
    weight_decay: float | Sequence[float],
) -> None:
    """Adam's step and AdamW's decay θ·(1 − γ·λ) in torch's single-pass fused kernel.

    ``weight_decay`` is one λ for all tensors, or one per tensor — how AdamC's corrected
    decay and AdamWN's per-tensor Eq. 3 factor (λ_i = (1 − f_i)/γ) ride along in the same pass.
    """
    if not params:
        return
    beta1, beta2 = group["betas"]
    steps = [s["step"] for s in states]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    if isinstance(weight_decay, (int, float)):
        calls: list[tuple[Any, ...]] = [
            (*b, float(weight_decay)) for b in buckets(params, grads, exp_avgs, exp_avg_sqs, steps)
        ]
    else:  # one kernel call per tensor, each with its own decay
        calls = [
            ([p], [g], [m], [v], [t], wd)
            for p, g, m, v, t, wd in zip(params, grads, exp_avgs, exp_avg_sqs, steps, weight_decay)
        ]
    for ps, gs, ms, vs, ts, wd in calls:
        torch._foreach_add_(ts, 1)
        torch._fused_adamw_(
            ps,
            gs,
            ms,
            vs,
            [],
            ts,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=wd,
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
