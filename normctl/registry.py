"""Optimizers by name: ``create_optimizer(model, "adamwn", lr=1e-3)``.

Names with ``+wn`` wrap a base optimizer in :class:`NormControl` (its own weight decay set to 0
on the controlled groups, since norm control replaces it); ``+c`` wraps it in
:class:`CorrectedDecay`. The groups come from :func:`normctl.param_groups` — with ``muon=True``
for ``"muon"``, ``"muonc"`` and ``"muon+wn"``, whose hidden matrices step by Muon and the rest by
Adam in the same optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .groups import param_groups
from .optim import SGDC, AdamC, AdamWN
from .optim.lion import Lion
from .optim.muon import MuonAdamW, MuonC
from .optim.wrapper import CorrectedDecay, NormControl


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


BASE: dict[str, Entry] = {
    "adamw": Entry(torch.optim.AdamW, {"lr": 1e-3}, "torch.optim.AdamW"),
    "adam": Entry(
        torch.optim.Adam, {"lr": 1e-3}, "torch.optim.Adam (its weight_decay is L2, coupled into the gradient)"
    ),
    "sgd": Entry(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "torch.optim.SGD with momentum"),
    "lion": Entry(Lion, {"lr": 1e-4}, "Lion (sign-based)"),
    "adamwn": Entry(AdamWN, {"lr": 1e-3, "target": 1.0, "rate": 1e-2}, "Adam with weight norm control"),
    "adamc": Entry(AdamC, {"lr": 1e-3}, "Adam with corrected weight decay"),
    "sgdc": Entry(SGDC, {"lr": 0.1, "momentum": 0.9}, "SGD with corrected weight decay"),
    "muon": Entry(MuonAdamW, {"lr": 1e-3}, "Muon on the hidden matrices, AdamW on the rest (one optimizer)"),
    "muonc": Entry(MuonC, {"lr": 1e-3}, "Muon and Adam with corrected weight decay"),
}
# the names whose groups split the hidden matrices (Muon) from the rest (Adam)
MUON_BASES = ("muon", "muonc")
WRAPPER_KEYS = {"wn": ("target", "rate", "rate_scaling", "scope", "relative_target", "control_at"), "c": ("max_lr",)}


def available_optimizers() -> dict[str, str]:
    """Every accepted name with a one-line description and its defaults."""
    names = {name: f"{e.description}; defaults {e.defaults}" for name, e in BASE.items()}
    for base in ("adam", "sgd", "lion", "adamw", "muon"):
        names[f"{base}+wn"] = f"{BASE[base].description} + NormControl (Eq. 3)"
    for base in ("adamw", "lion", "sgd"):
        names[f"{base}+c"] = f"{BASE[base].description} + CorrectedDecay"
    return names


def create_optimizer(
    model: nn.Module, name: str, *, weight_decay: float = 0.1, groups: list[dict] | None = None, **kwargs: Any
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``param_groups(model, weight_decay)`` (or ``groups``).

    ``kwargs`` go to the optimizer (and, for ``+wn``/``+c`` names, the wrapper's own keys to
    the wrapper). ``available_optimizers()`` lists the names.
    """
    if name not in available_optimizers():
        raise ValueError(f"unknown optimizer {name!r}; available: {sorted(available_optimizers())}")
    base_name, _, wrapper = name.partition("+")
    if groups is None:
        groups = param_groups(model, weight_decay=weight_decay, muon=base_name in MUON_BASES)
    entry = BASE[base_name]
    return wrapped(entry.factory, wrapper, groups, **{**entry.defaults, **kwargs})


def wrapped(
    factory: Callable[..., torch.optim.Optimizer], wrapper: str, groups: list[dict], **kwargs: Any
) -> torch.optim.Optimizer:
    """``factory(groups, …)`` inside the wrapper ``wrapper`` names (``"wn"``: NormControl, ``"c"``:
    CorrectedDecay, ``""``: none), the wrapper's own keys of ``kwargs`` going to the wrapper."""
    wrapper_kwargs = {k: kwargs.pop(k) for k in WRAPPER_KEYS.get(wrapper, ()) if k in kwargs}
    if wrapper == "wn":  # norm control replaces the base optimizer's decay on controlled groups
        groups = [{**g, "weight_decay": 0.0} if g.get("control", True) else g for g in groups]
    base = factory(groups, **kwargs)
    if wrapper == "wn":
        return NormControl(base, **wrapper_kwargs)
    if wrapper == "c":
        return CorrectedDecay(base, **wrapper_kwargs)
    return base
