"""``NormControl(torch.optim.Adam(...))`` is AdamWN: its step takes AdamWN's one-pass CPU kernel.

The generic wrapper reads the weights for their norms, scales them, then lets the inner
optimizer read and write them again — three passes where AdamWN's kernel makes one. Around
torch's own ``Adam`` or ``AdamW`` with nothing but Adam's update to do (no AMSGrad, maximize,
capturable or differentiable mode, no weight decay), the wrapper runs
the kernel on the inner optimizer's own state (``step``, ``exp_avg``, ``exp_avg_sq`` with torch's
keys and dtypes), so the inner optimizer, its state dict and a later plain ``step()`` see what
they would have made themselves. Anything else, and any batch the kernel does not take, leaves
the step to the inner optimizer as before.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _one_pass_cpu
from ._adam import adam_state, suit_one_pass
from ._base import Batch

ADAM_CLASSES = (torch.optim.Adam, torch.optim.AdamW)
UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable")


def is_plain_adam(optimizer: Optimizer) -> bool:
    """torch's own Adam or AdamW (not a subclass, whose step may differ)."""
    return type(optimizer) in ADAM_CLASSES


def one_pass_batches(batches: list[Batch], inner_state: MutableMapping[Tensor, dict]) -> list[Batch] | None:
    """Each batch as the one-pass kernel takes it — its params and grads with the inner
    optimizer's Adam state, created as torch would where it is missing — or None where any
    batch with gradients cannot take it (the inner optimizer then steps them all)."""
    out = []
    for batch in batches:
        if not batch.params:
            out.append(batch)
            continue
        group = batch.group
        if any(group.get(flag) for flag in UNSUPPORTED_FLAGS) or group.get("weight_decay", 0) != 0:
            return None
        states = [inner_state[p] for p in batch.params]
        if not all(states) and batch.params[0].device.type != "cpu":
            return None  # torch keeps the step count elsewhere for device kernels
        for p, state in zip(batch.params, states):
            if not state:
                state.update(adam_state(p))
        # an uncontrolled group takes the kernel too, its factors 1: Adam's step alone
        if group["control"] and group["control_at"] != "pre_step":
            return None
        if not (suit_one_pass(batch.params, states) and _one_pass_cpu.kernel() is not None):
            return None
        out.append(Batch(group, batch.params, batch.grads, states))
    return out
