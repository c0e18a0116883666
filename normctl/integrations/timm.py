"""normctl's optimizers in timm's optimizer factory.

After :func:`register`, ``timm.optim.create_optimizer_v2(model, "adamwn", lr=1e-3)`` (and
``"adamc"``, ``"sgdc"``, ``"muonc"``, ``"muon+wn"``, and the wrappers ``"adam+wn"``, ``"sgd+wn"``,
``"adamw+c"``) builds
normctl's optimizer, so a timm training script (``train.py --opt adamwn``) needs no other change::

    import timm.optim
    from normctl.integrations import timm as normctl_timm

    normctl_timm.register()
    optimizer = timm.optim.create_optimizer_v2(model, "adamwn", lr=1e-3, param_group_fn=normctl.param_groups)

Which tensors get what. timm groups a model's tensors by weight decay only (biases, norm gains
and ``model.no_weight_decay()`` in a group with 0); normctl's optimizers also need to know
which tensors are norm-controlled (AdamWN) and which feed a normalisation layer (AdamC, SGDC).
With ``param_group_fn=normctl.param_groups`` timm hands over normctl's own groups, which carry
those keys, and they are used as given — the recommended route. Without it:

* AdamWN (and ``+wn``) controls every tensor with two or more dimensions (matrices, convolution
  kernels, embeddings — what :func:`normctl.param_groups` controls) and leaves the others
  (biases, norm gains) to Adam's step, with AdamW's decay if their timm group has one;
* AdamC and SGDC (and ``+c``) keep timm's decay groups, but cannot tell which layers feed a
  normalisation layer, so they correct none and warn that they then behave as AdamW / SGD;
* ``muonc`` and ``muon+wn`` step every 2-d tensor by Muon — embeddings and the classifier too,
  which Muon recipes leave to Adam — and the others by Adam: pass
  ``param_group_fn=lambda m: normctl.param_groups(m, muon=True)``.

timm is an optional dependency (``pip install normctl[timm]``); this module imports it only
inside :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..optim import SGDC, AdamC, AdamWN
from ..optim.lion import Lion
from ..optim.muon import MuonAdamW, MuonC
from ..registry import wrapped

NORMCTL_KEYS = ("control", "normalized")  # set by normctl.param_groups, unknown to timm


def _groups(params: Any) -> list[dict[str, Any]]:
    """timm's params (a flat iterable of tensors, or param groups) as a list of groups."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return [dict(group, params=list(group["params"])) for group in params]
    return [{"params": params}]


def _from_normctl(groups: list[dict[str, Any]]) -> bool:
    return any(key in group for group in groups for key in NORMCTL_KEYS)


def control_by_shape(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group split into its tensors with ≥ 2 dimensions (``control=True``, their decay left
    to norm control) and the others (``control=False``, the group's decay as AdamW's); groups
    that already say which tensors are controlled (``normctl.param_groups``) are kept as they are."""
    if _from_normctl(groups):
        return groups
    out = []
    for group in groups:
        matrices = [p for p in group["params"] if p.dim() >= 2]
        others = [p for p in group["params"] if p.dim() < 2]
        if matrices:
            out.append({**group, "params": matrices, "control": True, "weight_decay": 0.0})
        if others:
            out.append({**group, "params": others, "control": False})
    return out


def _controlled(base: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """``base`` inside NormControl over :func:`control_by_shape`'s groups."""
    return lambda params, **kwargs: wrapped(base, "wn", control_by_shape(_groups(params)), **kwargs)


def _corrected(base: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """``base`` inside CorrectedDecay over timm's groups."""
    return lambda params, **kwargs: wrapped(base, "c", _groups(params), **kwargs)


def adamwn(params: Any, **kwargs: Any) -> AdamWN:
    """AdamWN over timm's params (see the module's note on which tensors are controlled)."""
    return AdamWN(control_by_shape(_groups(params)), **kwargs)


def adamc(params: Any, **kwargs: Any) -> AdamC:
    return AdamC(_groups(params), **kwargs)


def sgdc(params: Any, **kwargs: Any) -> SGDC:
    return SGDC(_groups(params), **kwargs)


def by_dimension(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group without a ``muon`` key split into its 2-d tensors (Muon) and the others (Adam);
    groups from ``normctl.param_groups(model, muon=True)`` are kept as they are."""
    out = []
    for group in groups:
        if "muon" in group:
            out.append(group)
            continue
        for muon in (True, False):
            params = [p for p in group["params"] if (p.dim() == 2) == muon]
            if params:
                out.append({**group, "params": params, "muon": muon})
    return out


def muonc(params: Any, **kwargs: Any) -> MuonC:
    """MuonC over timm's params, split by :func:`by_dimension`."""
    return MuonC(by_dimension(_groups(params)), **kwargs)


def muon_wn(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """MuonAdamW inside NormControl over timm's params (:func:`by_dimension`, then
    :func:`control_by_shape`: every tensor with ≥ 2 dimensions controlled)."""
    return wrapped(MuonAdamW, "wn", control_by_shape(by_dimension(_groups(params))), **kwargs)


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., torch.optim.Optimizer]
    description: str
    has_eps: bool
    has_momentum: bool
    has_betas: bool


OPTIMIZERS = {
    "adamwn": Entry(adamwn, "Adam with weight norm control (Loshchilov 2023)", True, False, True),
    "adamc": Entry(adamc, "Adam with corrected weight decay (Defazio 2025)", True, False, True),
    "sgdc": Entry(sgdc, "SGD with corrected weight decay (Defazio 2025)", False, True, False),
    "adam+wn": Entry(_controlled(torch.optim.Adam), "torch Adam inside NormControl", True, False, True),
    "sgd+wn": Entry(_controlled(torch.optim.SGD), "torch SGD inside NormControl", False, True, False),
    "lion+wn": Entry(_controlled(Lion), "normctl's Lion inside NormControl", False, False, True),
    "adamw+c": Entry(_corrected(torch.optim.AdamW), "torch AdamW inside CorrectedDecay", True, False, True),
    # has_momentum False: timm would pass its SGD default (0.9) over Muon's 0.95
    "muonc": Entry(muonc, "Muon and Adam with corrected weight decay (Defazio 2025)", True, False, True),
    "muon+wn": Entry(muon_wn, "Muon and Adam inside NormControl", True, False, True),
    "sgd+c": Entry(_corrected(torch.optim.SGD), "torch SGD inside CorrectedDecay", False, True, False),
}


def register(registry: Any = None, names: Iterable[str] | None = None) -> list[str]:
    """Add normctl's optimizers to timm's optimizer registry (``timm.optim``'s default one unless
    ``registry`` is given) and return the names added. Calling it again re-registers them."""
    try:
        from timm.optim import OptimInfo, _optim_factory
    except ImportError as error:
        raise ImportError("normctl.integrations.timm needs timm: pip install 'normctl[timm]'") from error
    registry = registry if registry is not None else _optim_factory.default_registry
    chosen = list(OPTIMIZERS) if names is None else list(names)
    unknown = sorted(set(chosen) - set(OPTIMIZERS))
    if unknown:
        raise ValueError(f"names: unknown {unknown}; accepted: {sorted(OPTIMIZERS)}")
    for name in chosen:
        entry = OPTIMIZERS[name]
        registry.register(
            OptimInfo(
                name=name,
                opt_class=entry.factory,
                description=f"normctl: {entry.description}",
                has_eps=entry.has_eps,
                has_momentum=entry.has_momentum,
                has_betas=entry.has_betas,
            )
        )
    return chosen
