"""``NormControl`` around torch's own Adam, AdamW or SGD: Eq. 3 and the inner step in one pass.

The generic wrapper reads the weights for their norms, scales them, then lets the inner
optimizer read and write them again — three passes over the weights where one will do. Around
torch's own ``Adam``/``AdamW`` (``NormControl(Adam)`` is AdamWN) and ``SGD`` with momentum,
with nothing but the plain update to do (no AMSGrad, maximize, capturable or differentiable
mode, no weight decay), the wrapper runs the one-pass CPU kernel on the inner optimizer's own
state — Adam's ``step``, ``exp_avg``, ``exp_avg_sq`` or SGD's ``momentum_buffer``, with torch's
keys and dtypes — so the inner optimizer, its state dict and a later plain ``step()`` see what
they would have made themselves, and the norms the kernel measures while writing θ serve the
next step. Anything else, and any batch the kernel does not take, leaves the step to the inner
optimizer as before.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _one_pass_cpu
from ._adam import adam_state, fused_adamw_, suit_one_pass
from ._base import Batch

KINDS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd"}
UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable")
STATE_TENSORS = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}


@dataclass(frozen=True)
class InnerBatch:
    """A batch as the kernel takes it: its tensors with the inner optimizer's state."""

    batch: Batch
    states: list[dict]
    starts: list[bool]  # SGD: the momentum buffer is new this step


def kind(optimizer: Optimizer) -> str | None:
    """ "adam" or "sgd" for torch's own classes (not subclasses, whose step may differ), else None."""
    return KINDS.get(type(optimizer))


def plan(inner_kind: str, batches: list[Batch], inner_state: MutableMapping[Tensor, dict]) -> list[InnerBatch] | None:
    """Each batch with gradients as the kernel takes it, the inner state created as torch would
    where it is missing — or None where any batch cannot take the kernel (the inner optimizer
    then steps them all)."""
    if torch.compiler.is_compiling():
        return None  # dynamo cannot trace the C++ kernel: the inner optimizer steps, which inductor fuses
    out = []
    for batch in batches:
        group = batch.group
        if not batch.params:
            out.append(InnerBatch(batch, [], []))
            continue
        if any(group.get(flag) for flag in UNSUPPORTED_FLAGS) or group.get("weight_decay", 0) != 0:
            return None
        if group["control"] and group["control_at"] != "pre_step":
            return None  # an uncontrolled group takes the kernel too, its factors 1: the plain step
        if inner_kind == "sgd" and not group["momentum"] > 0:
            return None
        if batch.params[0].device.type != "cpu" or _one_pass_cpu.kernel() is None:
            return None
        states = [inner_state[p] for p in batch.params]
        # torch makes Adam's state at the first step, SGD's buffer at the first step with momentum
        starts = [(state.get("momentum_buffer") is None) if inner_kind == "sgd" else not state for state in states]
        if not suit_one_pass(batch.params, states, STATE_TENSORS[inner_kind], starts):
            return None
        for p, state, start in zip(batch.params, states, starts):
            if start:
                state.update(adam_state(p) if inner_kind == "adam" else {"momentum_buffer": torch.zeros_like(p)})
        out.append(InnerBatch(batch, states, starts))
    return out


def step_(inner_kind: str, inner: InnerBatch, factors: Tensor) -> Tensor | None:
    """Eq. 3's factors and the inner step in one pass; ‖θ_i‖² after it (float64). An uncontrolled
    Adam batch needs no norms: torch's own fused step, one call, takes it (None)."""
    batch = inner.batch
    if inner_kind == "adam" and not batch.group["control"]:
        fused_adamw_(batch.params, batch.grads, inner.states, batch.group, weight_decay=0.0)
        return None
    if inner_kind == "adam":
        return _one_pass_cpu.adamwn_step_(batch.params, batch.grads, inner.states, batch.group, factors)
    buffers = [state["momentum_buffer"] for state in inner.states]
    return _one_pass_cpu.sgd_step_(batch.params, batch.grads, buffers, inner.starts, batch.group, factors)
