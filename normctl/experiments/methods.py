"""A training method by name: the optimizer, with norm-controlled targets set the paper's way."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .. import schedules
from ..registry import available_optimizers, create_optimizer

# Peak learning rates for the base optimizers that do not share Adam's scale.
BASE_LR_SCALE = {"sgd": 100.0, "sgdc": 100.0, "lion": 0.1}
ADAM_FAMILY = ("adam", "adamw", "adamwn", "adamc")


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
    betas: tuple[float, float] | None = None,
    decay: str = "l2",
) -> torch.optim.Optimizer:
    """``create_optimizer(method)`` over ``groups``. ``lr`` is the Adam-scale learning rate
    (SGD and SGDC take 100×, Lion 0.1×). Norm-controlled methods ramp their target from 1 to AdamW's
    measured final norm ratio over the first 5 % of ``steps`` (Loshchilov 2023), then hold it.
    ``betas`` go to the Adam-family methods; ``decay`` (l2/l1/min) to AdamW and AdamC — AdamW
    with l1/min decay is AdamC with no group marked normalised, i.e. plain decoupled decay."""
    base = method.partition("+")[0]
    kwargs: dict[str, Any] = {"lr": lr * BASE_LR_SCALE.get(base, 1.0)}
    if betas is not None and base in ADAM_FAMILY:
        kwargs["betas"] = betas
    if is_norm_controlled(method):
        kwargs.update(target=schedules.target_from_adamw(adamw_norm_ratio or 1.0, max(1, steps // 20)), rate=rate)
    if decay == "l2":
        return create_optimizer(model, method, groups=groups, **kwargs)
    if method not in ("adamw", "adamc"):
        raise ValueError(f"decay={decay!r} is available for adamw and adamc, not {method!r}")
    if method == "adamc":
        return create_optimizer(model, method, groups=groups, decay=decay, **kwargs)
    with warnings.catch_warnings():  # AdamC standing in for AdamW has no normalised group, on purpose
        warnings.filterwarnings("ignore", message=".*no param group has normalized=True.*")
        return create_optimizer(
            model, "adamc", groups=[{**g, "normalized": False} for g in groups], decay=decay, **kwargs
        )


def adamw_first(methods) -> list[str]:
    """AdamW runs first: the norm-controlled methods take their target from its result."""
    return sorted(methods, key=lambda m: m != "adamw")
