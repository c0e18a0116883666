"""Refuse a state dict that is not this optimizer's before anything is loaded.

torch's ``Optimizer.load_state_dict`` checks only the number of groups and of tensors per group.
A state of other shapes then reaches the kernels (memory corruption in a fused step), another
optimizer's groups bring keys this one never reads (or lack keys it needs), and two groups of
equal size saved in another order attach each tensor's state to the wrong tensor. The checks
here read the state dict and the optimizer only, so a refusal leaves both as they were.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

# Keys with which a group's saved state may legitimately differ from a fresh optimizer's.
_LABELS = ("name", "param_names")


def check_state_dict(optimizer: Optimizer, state_dict: Any, *, required: Set[str], allowed: Set[str]) -> None:
    """``ValueError`` naming the group, tensor and key where ``state_dict`` cannot be loaded
    into ``optimizer``: not an optimizer state dict, another optimizer's groups (``required``
    keys missing, keys outside ``allowed``), groups of other sizes, other labels or another
    order, per-element state of another shape or kind than its tensor."""
    owner = type(optimizer).__name__
    # only the keys the groups hold now: torch's unpickling (a deepcopy, a framework's copy) adds
    # ``differentiable`` to ``defaults`` and never to the groups, so saved groups lack it rightly
    required = required & set.intersection(*(set(group) for group in optimizer.param_groups))
    if not (isinstance(state_dict, dict) and isinstance(state_dict.get("param_groups"), list)):
        raise ValueError(f"{owner}.load_state_dict needs an optimizer state dict with 'state' and 'param_groups'")
    saved_groups, state = state_dict["param_groups"], state_dict.get("state", {})
    if len(saved_groups) != len(optimizer.param_groups):
        found, here = len(saved_groups), len(optimizer.param_groups)
        raise ValueError(f"{owner}: the state dict has {found} param groups, this optimizer {here}")
    for g, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups)):
        missing, unknown = sorted(required - set(saved)), sorted(set(saved) - allowed)
        if missing or unknown:
            if missing:
                problem = f"lacks {missing}: it was saved by another optimizer (or by a version without these settings)"
            else:
                problem = f"has keys {unknown} that {owner} does not use: it was saved by another optimizer"
            raise ValueError(f"{owner}: param group {g} of the state dict {problem}")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"{owner}: param group {g} of the state dict holds {len(saved['params'])} tensors, "
                f"this optimizer's {len(group['params'])}"
            )
        for label in _LABELS:
            if label in saved and label in group and saved[label] != group[label]:
                raise ValueError(
                    f"{owner}: param group {g} of the state dict is {label} {saved[label]!r}, this optimizer's "
                    f"{group[label]!r}: the groups were saved in another order or belong to another model"
                )
        for index, param in zip(saved["params"], group["params"]):
            for key, value in state.get(index, {}).items():
                _check_entry(owner, g, index, key, value, param)


def _check_entry(owner: str, group: int, index: Any, key: str, value: Any, param: Tensor) -> None:
    if not isinstance(value, Tensor) or value.dim() == 0:  # step counts, ‖θ_0‖, flags
        return
    where = f"{owner}: state {key!r} of tensor {index} (param group {group})"
    if value.shape != param.shape:
        raise ValueError(f"{where} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}")
    if value.is_floating_point() != param.is_floating_point() or value.is_complex() != param.is_complex():
        raise ValueError(f"{where} has dtype {value.dtype}, which cannot hold state of a {param.dtype} parameter")
