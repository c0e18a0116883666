"""A training method by name: the optimizer, with norm-controlled targets set the paper's way."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import schedules
from ..registry import available_optimizers, create_optimizer

# Peak learning rates for the base optimizers that do not share Adam's scale.
BASE_LR_SCALE = {"sgd": 100.0, "sgdc": 100.0, "lion": 0.1}


def is_norm_controlled(method: str) -> bool:
    return method == "adamwn" or method.endswith("+wn")


def check_methods(methods) -> None:
    unknown = [m for m in methods if m not in available_optimizers()]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {sorted(available_optimizers())}")


def build_method(
    method: str,
    model: nn.Module,
    groups: list[dict],
    *,
    lr: float,
    steps: int,
    rate: float = 1e-2,
    adamw_norm_ratio: float | None = None,
) -> torch.optim.Optimizer:
    """``create_optimizer(method)`` over ``groups``. ``lr`` is the Adam-scale learning rate
    (SGD and SGDC take 100×, Lion 0.1×). Norm-controlled methods ramp their target from 1 to AdamW's
    measured final norm ratio over the first 5 % of ``steps`` (Loshchilov 2023), then hold it."""
    kwargs: dict[str, Any] = {"lr": lr * BASE_LR_SCALE.get(method.partition("+")[0], 1.0)}
    if is_norm_controlled(method):
        kwargs.update(target=schedules.target_from_adamw(adamw_norm_ratio or 1.0, max(1, steps // 20)), rate=rate)
    return create_optimizer(model, method, groups=groups, **kwargs)


def adamw_first(methods) -> list[str]:
    """AdamW runs first: the norm-controlled methods take their target from its result."""
    return sorted(methods, key=lambda m: m != "adamw")
