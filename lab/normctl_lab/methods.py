"""A training method by name: the optimizer, with norm-controlled targets set the paper's way."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from normctl import AutoTarget, schedules
from normctl.groups import is_norm_layer
from normctl.registry import MUON_BASES, available_optimizers, create_optimizer

from .peers import PEERS, build_peer

# Peak learning rates for the base optimizers that do not share Adam's scale.
BASE_LR_SCALE = {"sgd": 100.0, "sgdc": 100.0, "lion": 0.1}
ADAM_FAMILY = ("adam", "adamw", "adamwn", "adamc", "muon", "muonc")  # betas: Muon's Adam part takes them


def uses_muon(method: str) -> bool:
    """Whether ``method`` steps the hidden matrices by Muon (its groups from ``param_groups(muon=True)``)."""
    return method.partition("+")[0] in MUON_BASES


def is_norm_controlled(method: str) -> bool:
    return method == "adamwn" or method.endswith("+wn")


def check_methods(methods) -> None:
    known = set(available_optimizers()) | set(PEERS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {sorted(known)}")


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
    target_shape: str = "ramp",
    scope: str = "tensor",
    auto: AutoTarget | None = None,
    cpr_kappa_init: str = "inflection_point",
    cpr_kappa_param: float = 1000.0,
) -> torch.optim.Optimizer:
    """``create_optimizer(method)`` over ``groups``. ``lr`` is the Adam-scale learning rate
    (SGD and SGDC take 100×, Lion 0.1×). Norm-controlled methods take AdamW's measured final norm
    ratio as their target, reached as :func:`target_schedule` says, with one norm per ``scope``.
    ``betas`` go to the Adam-family methods; ``decay`` (l2/l1/min) to AdamW and AdamC — AdamW
    with l1/min decay is AdamC with no group marked normalised, i.e. plain decoupled decay. ``auto``
    replaces the AdamW-measured target by one the run measures itself. ``adamcpr`` and ``hyperball``
    are the peers of :mod:`.peers` (``cpr_kappa_*`` are AdamCPR's bound rule and its parameter)."""
    if method in PEERS:
        return build_peer(method, groups, lr=lr, betas=betas, kappa_init=cpr_kappa_init, kappa_param=cpr_kappa_param)
    base = method.partition("+")[0]
    kwargs: dict[str, Any] = {"lr": lr * BASE_LR_SCALE.get(base, 1.0)}
    if betas is not None and base in ADAM_FAMILY:
        kwargs["betas"] = betas
    if is_norm_controlled(method):
        target = auto or target_schedule(target_shape, adamw_norm_ratio or 1.0, steps)
        kwargs.update(target=target, rate=rate, scope=scope)
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


def build_plain(
    method: str, params, *, lr: float, weight_decay: float, target: AutoTarget | None = None
) -> torch.optim.Optimizer:
    """The call a user writes: ``method`` over ``model.parameters()`` with its own defaults, the
    Adam-scale ``lr`` (SGD and SGDC at 100×, momentum 0.9) and AdamW's ``weight_decay`` where the
    method decays (AdamWN keeps its default target, or ``target`` if given: ``"auto"``)."""
    import normctl

    lr = lr * BASE_LR_SCALE.get(method, 1.0)
    if method == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if method == "adamwn":
        return normctl.AdamWN(params, lr=lr) if target is None else normctl.AdamWN(params, lr=lr, target=target)
    if method == "adamc":
        return normctl.AdamC(params, lr=lr, weight_decay=weight_decay)
    if method == "muon":  # Muon on the 2-d tensors, AdamW on the rest (MuonAdamW's plain split)
        return normctl.MuonAdamW(params, lr=lr, weight_decay=weight_decay)
    if method == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if method == "sgdc":
        return normctl.SGDC(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"a plain call is built for adamw, adamwn, adamc, muon, sgd and sgdc, not {method!r}")


def target_schedule(shape: str, ratio: float, steps: int) -> schedules.Schedule:
    """AdamWN's target r_t for a run of ``steps``: ``"ramp"`` from 1 to ``ratio`` over the first
    5 % and then held (Loshchilov 2023), ``"constant"`` ``ratio`` from the first step, ``"linear"``
    from 1 to ``ratio`` over the whole run (the norm grows as AdamW's does, reaching it at the end)."""
    if shape == "ramp":
        return schedules.target_from_adamw(ratio, max(1, steps // 20))
    if shape == "constant":
        return schedules.constant(ratio)
    if shape == "linear":
        return schedules.target_from_adamw(ratio, max(1, steps))
    raise ValueError(f"target_shape must be 'ramp', 'constant' or 'linear', got {shape!r}")


def with_gains_controlled(model: nn.Module, groups: list[dict], target: schedules.Schedule | None = None) -> list[dict]:
    """``param_groups`` with the norm layers' gains moved out of ``no_decay`` into a controlled
    group of their own (``gains``), given its own ``target`` if one is passed; their biases,
    initialised at 0, stay uncontrolled."""
    gain_ids = {id(p) for p in norm_gains(model).values()}
    own = {} if target is None else {"target": target}
    out = []
    for group in groups:
        if group["name"] != "no_decay":
            out.append(group)
            continue
        gains = [p for p in group["params"] if id(p) in gain_ids]
        rest = [p for p in group["params"] if id(p) not in gain_ids]
        if gains:
            out.append({**group, "name": "gains", "params": gains, "control": True, **own})
        if rest:
            out.append({**group, "params": rest})
    return out


def norm_gains(model: nn.Module) -> dict[str, nn.Parameter]:
    """The norm layers' gains (their ``weight``) by parameter name."""
    return {
        f"{prefix}.weight" if prefix else "weight": module.weight
        for prefix, module in model.named_modules()
        if is_norm_layer(module) and isinstance(getattr(module, "weight", None), nn.Parameter)
    }


def adamw_first(methods) -> list[str]:
    """AdamW runs first: the norm-controlled methods take their target from its result."""
    return sorted(methods, key=lambda m: m != "adamw")
