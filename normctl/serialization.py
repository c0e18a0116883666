"""normctl's objects in checkpoints that ``torch.load(..., weights_only=True)`` reads.

torch >= 2.6 loads with ``weights_only=True`` by default, and so do the frameworks that resume
runs (the Hugging Face Trainer's ``optimizer.pt``, Lightning's ``ckpt_path``). An optimizer state
dict holds its param groups, and an AdamWN group holds its target and rate: a schedule
(``target_from_adamw`` …) or an :class:`AutoTarget`. Each is a frozen dataclass of numbers and
strings, so ``import normctl`` registers them with ``torch.serialization.add_safe_globals``: the
weights-only unpickler then rebuilds them from their fields and runs no other code.

Registering rather than converting them to plain dicts in ``state_dict()``: the state dict keeps
the objects the optimizer holds (a group's ``target`` is the schedule the user passed, before and
after a round trip), and no load path — torch's, DCP's, a framework's — needs to know a format.
The cost is that the process loading a checkpoint must have imported normctl, which every process
that builds a normctl optimizer has.
"""

from __future__ import annotations

import torch

from . import schedules
from .optim import AutoTarget

SAFE_CLASSES = (
    schedules.Constant,
    schedules.LinearRamp,
    schedules.Cosine,
    schedules.PiecewiseLinear,
    AutoTarget,
)


def allow_normctl_objects() -> None:
    """Let ``torch.load(..., weights_only=True)`` rebuild normctl's schedules and automatic
    targets (a no-op on torch without ``add_safe_globals``, which loads with weights_only=False)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(list(SAFE_CLASSES))
