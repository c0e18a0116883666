"""Which weights are norm-controlled, decayed and normalised — decided in one place, with reasons.

The optimizers never look at parameter names; they read three keys of each param group:

* ``control`` (AdamWN): apply Eq. 3 norm control;
* ``normalized`` (AdamC, SGDC): the tensor's output feeds a normalisation layer, so its
  decay gets the γ_t/γ_max correction;
* ``weight_decay``: λ for the groups that are decayed, 0 for the others.

A fourth label, ``output``, holds the output layer: decayed as AdamW decays it, never
norm-controlled (its norm sets the logits' scale: held near its initial norm it cost held-out
loss on every model with an output layer of its own that we tried), never normalised;
``control_output=True`` puts it back in ``decay``.

:func:`param_groups` builds those groups for a model; :func:`param_roles` returns the decision
for every tensor with the reason, and :func:`format_roles` prints it as a table.

The rules, in order (the first that matches decides):

1. gains and biases of normalisation layers → ``no_decay``;
2. tensors with fewer than 2 dimensions (biases, scalars) → ``no_decay``;
3. embeddings (and weights tied to one) → ``decay`` or ``no_decay`` (``embeddings=``);
4. the output layer (unembedding / classifier) → ``output`` (``decay`` with
   ``control_output=True``), never normalised;
5. normalised matrices → ``normalized`` (decayed, controlled and corrected), by the rule
   ``normalized=``: ``"transformer"`` — every other matrix, as Defazio (2025) treats
   transformers; ``"structural"`` — a Linear/Conv whose next registered layer is a norm layer
   of matching width (conv → BatchNorm in ResNets); ``"auto"`` — transformer when the model
   has an embedding and a norm layer, structural otherwise; or an explicit set of names;
6. every other tensor with ≥ 2 dimensions → ``decay``.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed

GROUP_FLAGS = {  # group label -> (control, normalized, decayed)
    "normalized": (True, True, True),
    "decay": (True, False, True),
    "output": (False, False, True),  # the output layer (unless control_output=True): AdamW's decay
    "no_decay": (False, False, False),
}

_NORM_CLASS_NAME = re.compile(r"Norm(\d+d)?$")  # LayerNorm, RMSNorm, BatchNorm2d, LlamaRMSNorm…


@dataclass(frozen=True)
class ParamRole:
    """The decision for one parameter tensor."""

    name: str
    shape: tuple[int, ...]
    group: str  # a key of GROUP_FLAGS
    reason: str
    kind: str = "matrix"  # "norm", "vector", "embedding", "output" or "matrix"

    @property
    def control(self) -> bool:
        return GROUP_FLAGS[self.group][0]

    @property
    def normalized(self) -> bool:
        return GROUP_FLAGS[self.group][1]


def is_norm_layer(module: nn.Module) -> bool:
    """torch's norm layers, and any module whose class name ends in ``Norm`` (custom RMSNorm,
    nanoGPT's LayerNorm with optional bias, ``BatchNorm2d`` …)."""
    norm_types: tuple[type[nn.Module], ...] = (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.modules.batchnorm._NormBase,
        nn.LocalResponseNorm,
    )
    if hasattr(nn, "RMSNorm"):
        norm_types += (nn.RMSNorm,)
    return isinstance(module, norm_types) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


def param_roles(
    model: nn.Module,
    *,
    normalized: str | Collection[str] = "auto",
    embeddings: str = "decay",
    output_layer: str | None = None,
    control_output: bool = False,
) -> list[ParamRole]:
    """The group of every parameter of ``model`` and why (rules in the module docstring).

    Args:
        normalized: ``"auto"``, ``"transformer"``, ``"structural"``, ``"none"``, or the names
            of the parameters that are normalised.
        embeddings: ``"decay"`` (nanoGPT's choice, default) or ``"no_decay"``.
        output_layer: name of the output module (e.g. ``"lm_head"``); by default a Linear
            tied to an embedding, else the last ``nn.Linear`` registered (unless a norm layer
            follows it): an LM head, a classifier.
        control_output: whether norm control (AdamWN, NormControl) holds the output layer's
            norm (group ``decay``) or leaves it to AdamW's decay (group ``output``, the default).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be the nn.Module itself (param_groups(model)), got {type(model).__name__}: the roles "
            "are read from its modules and parameter names, which model.parameters() does not carry"
        )
    if not isinstance(control_output, bool):
        raise TypeError(f"control_output must be True or False, got {control_output!r}")
    if embeddings not in ("decay", "no_decay"):
        raise ValueError(f"embeddings must be 'decay' or 'no_decay', got {embeddings!r}")
    if isinstance(normalized, str) and normalized not in ("auto", "transformer", "structural", "none"):
        raise ValueError(
            "normalized must be 'auto', 'transformer', 'structural', 'none' or a "
            f"collection of parameter names, got {normalized!r}"
        )

    owners = _owners(model)  # id(param) -> [(qualified name, owning module)]
    named = list(model.named_parameters())  # deduplicated: tied weights appear once
    if not isinstance(normalized, str):
        unknown = set(normalized) - {n for entries in owners.values() for n, _ in entries}
        if unknown:
            raise ValueError(f"normalized names not found in the model: {sorted(unknown)}")
    has_embedding = any(isinstance(m, nn.Embedding) for m in model.modules())
    has_norm = any(is_norm_layer(m) for m in model.modules())
    rule = normalized
    if rule == "auto":
        rule = "transformer" if has_embedding and has_norm else "structural"
    feeds_norm = _modules_feeding_a_norm(model)
    output_name = output_layer if output_layer is not None else _default_output_layer(model, feeds_norm)
    if output_name is not None and output_name not in dict(model.named_modules()):
        raise ValueError(f"output_layer {output_name!r} is not a module of the model")
    output_group = "decay" if control_output else "output"

    roles = []
    for name, p in named:
        entries = owners[id(p)]
        aliases = [n for n, _ in entries if n != name]
        tied = f" (tied with {', '.join(aliases)})" if aliases else ""
        modules = [m for _, m in entries]
        module_names = [n.rpartition(".")[0] for n, _ in entries]
        norm = next((m for m in modules if is_norm_layer(m)), None)
        kind = "matrix"
        if norm is not None:
            group, reason, kind = "no_decay", f"gain/bias of {type(norm).__name__}", "norm"
        elif p.ndim < 2:
            group, reason, kind = "no_decay", f"{p.ndim}-d tensor (bias or scale)", "vector"
        elif any(isinstance(m, nn.Embedding) for m in modules):
            group, reason, kind = embeddings, f"embedding{tied}", "embedding"
        elif output_name is not None and output_name in module_names:
            group, reason, kind = output_group, f"output layer {output_name}{tied}", "output"
        elif not isinstance(rule, str):
            in_set = bool(set(rule) & {n for n, _ in entries})
            group = "normalized" if in_set else "decay"
            reason = "listed as normalized" if in_set else "matrix, not listed as normalized"
        elif rule == "transformer":
            group, reason = "normalized", "matrix in a transformer (all but the output layer)"
        elif rule == "structural" and any(id(m) in feeds_norm for m in modules):
            norm_name = next(feeds_norm[id(m)] for m in modules if id(m) in feeds_norm)
            group, reason = "normalized", f"output feeds {norm_name}"
        else:
            group, reason = "decay", "matrix (ndim >= 2)"
        roles.append(ParamRole(name, tuple(p.shape), group, reason, kind))
    return roles


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.1,
    *,
    normalized: str | Collection[str] = "auto",
    embeddings: str = "decay",
    output_layer: str | None = None,
    control_output: bool = False,
    muon: bool = False,
    verbose: bool = False,
) -> list[dict]:
    """Param groups for any normctl optimizer (and torch's, which ignore the extra keys).

    Each group has ``name`` (``normalized``/``decay``/``output``/``no_decay``), ``params``, ``control``,
    ``normalized`` and ``weight_decay`` (``weight_decay`` for decayed groups, 0 otherwise).
    Empty groups are left out. ``verbose=True`` prints :func:`format_roles`.

    ``muon=True`` (for :class:`normctl.MuonC`) adds the key ``muon`` and splits each group in
    two, as every Muon recipe does: the hidden matrices — 2-d, neither an embedding nor the
    output layer — step by Muon (``name`` with ``_muon`` appended), the rest by Adam.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    roles = param_roles(
        model, normalized=normalized, embeddings=embeddings, output_layer=output_layer, control_output=control_output
    )
    if verbose:
        print(format_roles(roles))
    by_name = dict(model.named_parameters())
    groups = []
    for label, (control, is_normalized, decayed) in GROUP_FLAGS.items():
        for by_muon in (True, False) if muon else (None,):
            params = [by_name[r.name] for r in roles if r.group == label and by_muon in (None, takes_muon(r))]
            if params:
                group = {
                    "name": label + ("_muon" if by_muon else ""),
                    "params": params,
                    "control": control,
                    "normalized": is_normalized,
                    "weight_decay": float(weight_decay) if decayed else 0.0,
                }
                groups.append(group if by_muon is None else {**group, "muon": by_muon})
    return groups


def takes_muon(role: ParamRole) -> bool:
    """Whether Muon steps this tensor: a hidden matrix (2-d, not an embedding, not the output
    layer), as Jordan (2024) and Moonshot (2025) apply it; the rest is Adam's."""
    return role.kind == "matrix" and len(role.shape) == 2


def format_roles(roles: list[ParamRole]) -> str:
    """A table of the decisions and a one-line summary per group."""
    width = max([len(r.name) for r in roles] + [4])
    lines = [f"{'name':<{width}}  {'shape':<16} {'group':<10}  reason"]
    for r in roles:
        lines.append(f"{r.name:<{width}}  {str(r.shape):<16} {r.group:<10}  {r.reason}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in roles:
        counts[r.group][0] += 1
        counts[r.group][1] += int(torch.Size(r.shape).numel())
    summary = ", ".join(f"{g}: {n} tensors, {size:,} parameters" for g, (n, size) in counts.items())
    lines.append(summary)
    return "\n".join(lines)


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    owners: dict[int, list[tuple[str, nn.Module]]] = defaultdict(list)
    for module_name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{pname}" if module_name else pname
            if qualified not in [n for n, _ in owners[id(p)]]:
                owners[id(p)].append((qualified, module))
    return owners


def _default_output_layer(model: nn.Module, feeds_norm: dict[int, str]) -> str | None:
    """A Linear tied to an embedding, else the last Linear registered — an LM head, a classifier
    — unless a norm layer follows it (then it is a hidden layer, and the model has no Linear
    output)."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, module in linears:
        if id(module.weight) in embedding_weights:
            return name
    if linears and id(linears[-1][1]) not in feeds_norm:
        return linears[-1][0]
    return None


def _modules_feeding_a_norm(model: nn.Module) -> dict[int, str]:
    """Linear/Conv modules whose next registered layer is a norm layer of the same width.

    Registration order is how ResNets (conv1, bn1, …, downsample = Sequential(conv, bn)) and
    most CNNs are written; a norm of a different width is not fed by that layer.
    """
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if is_norm_layer(m) or isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    feeds = {}
    for (_, layer), (norm_name, norm) in zip(layers, layers[1:]):
        if is_norm_layer(layer) or not is_norm_layer(norm):
            continue
        width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if _norm_width(norm) in (width, None):
            feeds[id(layer)] = f"{norm_name} ({type(norm).__name__})"
    return feeds


def _norm_width(norm: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(norm, attr, None), int):
            return getattr(norm, attr)
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    weight = getattr(norm, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim else None


def split_plain(params: Any, owner: str, uncontrolled: dict[str, Any]) -> Any:
    """``params`` as the groups a plain call gets: given tensors rather than param groups
    (``AdamWN(model.parameters())``), those with fewer than 2 dimensions — norm gains, biases,
    norm shifts — go to a group of their own with ``uncontrolled`` settings (neither controlled
    nor decayed), as nanoGPT, timm and the Hugging Face Trainer leave them; one warning says how
    many of each and how to choose otherwise. Param groups (dicts) are returned as given: their
    author decides."""
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) for p in params):
        return params  # explicit groups, named parameters, or nothing: torch's rules apply
    # a flat shard's dimensions are not its tensors' (FSDP1, ZeRO-3): refused as the norms would be
    distributed.check_supported(params, owner)
    matrices = [p for p in params if p.dim() >= 2]
    vectors = [p for p in params if p.dim() < 2]
    if vectors:
        warnings.warn(
            f"{owner} over plain parameters: {len(matrices)} tensor(s) with 2 or more dimensions are controlled; "
            f"{len(vectors)} with fewer (norm gains, biases) are neither controlled nor decayed, as mature trainers "
            "leave them. To choose otherwise pass param groups: normctl.param_groups(model), or "
            "[{'params': ..., 'control': True}].",
            stacklevel=3,
        )
    groups = [{"params": matrices, "name": "matrices"}] if matrices else []
    return groups + ([{"params": vectors, "name": "vectors", **uncontrolled}] if vectors else [])
