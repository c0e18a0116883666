"""Muon on the hidden matrices and Adam on the rest, in one optimizer: :class:`MuonAdamW`, and
:class:`MuonC` with Defazio's (2025) corrected decay on normalised layers."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from .. import distributed, rules
from ._adam import adam_state
from ._base import (
    Batch,
    NormctlOptimizer,
    check_betas,
    check_bools,
    check_choice,
    check_lr,
    check_nonnegative,
    corrected_lr_ratio,
    is_real,
    warn_if_nothing_normalized,
)
from .adamc import check_corrected_decay_keys, decayed_adam_step_

# Jordan's (2024) quintic Newton–Schulz coefficients and step count, as torch.optim.Muon's defaults
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def newton_schulz(matrix: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> Tensor:
    """O ≈ U·Vᵀ of ``matrix`` = U·S·Vᵀ: Jordan's (2024) quintic iteration X ← a·X + (b·A + c·A²)·X
    with A = X·Xᵀ, from X = M/‖M‖_F, in bfloat16 on the wide orientation — torch.optim.Muon's
    arithmetic, operation for operation. Its singular values land in about [0.5, 1.5], not at 1."""
    a, b, c = coefficients
    wide = matrix.size(0) <= matrix.size(1)
    x = matrix.bfloat16() if wide else matrix.bfloat16().T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


def muon_lr_scale(shape: torch.Size, adjust_lr_fn: str) -> float:
    """s, the factor on Muon's lr for an m × n matrix: ``"original"`` sqrt(max(1, m/n)) (Jordan
    2024); ``"match_rms_adamw"`` 0.2·sqrt(max(m, n)), which gives the update AdamW's RMS so that
    AdamW's lr and λ carry over (Moonshot's Liu et al. 2025)."""
    rows, columns = shape[0], shape[1]
    if adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / columns))
    return 0.2 * math.sqrt(max(rows, columns))


class MuonAdamW(NormctlOptimizer):
    r"""Muon on the groups with ``muon=True``, AdamW on the others, in one optimizer object.

    On a Muon group, with momentum μ, decay λ and s from :func:`muon_lr_scale`::

        B ← μ·B + (1 − μ)·g;   O = NS(g + μ·(B − g)) (Nesterov) or NS(B)
        θ ← (1 − γ_t·λ)·θ − γ_t·s·O

    — ``torch.optim.Muon``'s step, bit for bit (with torch's ``momentum_buffer``), and AdamW's on
    the rest, so this equals a torch Muon over the matrices plus a torch AdamW over the other
    tensors, as every Muon recipe builds them, while a scheduler, a checkpoint and a wrapper see
    one optimizer. Its decayed norm settles where decoupled decay meets an update of measured
    size and cosine with the weight (``rules.decayed_steady_norm``; docs/math.md).

    Which tensors take Muon: ``normctl.param_groups(model, muon=True)`` sends the hidden matrices
    (2-d, neither an embedding nor the output layer) to Muon and the rest to Adam. A group without
    a ``muon`` key takes Muon when all its tensors are 2-d and Adam when none is; plain parameters
    (``MuonAdamW(model.parameters())``) are split so, the tensors with fewer than 2 dimensions
    undecayed (and one warning says that the embeddings and output layer, which Muon recipes
    leave to Adam, are matrices too).

    Args:
        lr: γ_t for every group (per-group ``lr`` as usual); with the default ``adjust_lr_fn``
            one lr and λ serve both parts, AdamW's own.
        weight_decay: λ, decoupled, as in ``torch.optim.AdamW`` and ``torch.optim.Muon``.
        momentum, nesterov, ns_coefficients, ns_steps: as in ``torch.optim.Muon``.
        adjust_lr_fn: ``"match_rms_adamw"`` (default here; torch's default is ``"original"``)
            or ``"original"`` (then Muon groups want an lr near 0.02 of their own).
        betas, eps: Adam's, for the other groups.
        decay: ``"l2"`` (default), ``"l1"`` or ``"min"``: the decay direction D(θ).
        maximize, foreach, fused, skip_nonfinite: as in :class:`normctl.AdamC`.
    """

    _describe_role = "muon"
    _eager_state = True
    _corrected_keys: frozenset[str] = frozenset()  # MuonC's max_lr and normalized

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        *,
        adjust_lr_fn: str = "match_rms_adamw",
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_steps: int = NS_STEPS,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        decay: str = "l2",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
        **corrected: Any,
    ) -> None:
        unexpected = sorted(set(corrected) - self._corrected_keys)
        if unexpected:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {unexpected}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            adjust_lr_fn=adjust_lr_fn,
            ns_coefficients=ns_coefficients,
            ns_steps=ns_steps,
            betas=betas,
            eps=eps,
            decay=decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
            muon=None,
            **corrected,
        )
        super().__init__(split_for_muon(params, type(self).__name__), defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_nonnegative("momentum", group["momentum"])
        if group["momentum"] >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']!r}")
        check_bools(group, "nesterov", "maximize")
        check_choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        coefficients = group["ns_coefficients"]
        if not (isinstance(coefficients, (tuple, list)) and len(coefficients) == 3 and all(map(is_real, coefficients))):
            raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {coefficients!r}")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {steps!r}")
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_choice("decay", group["decay"], rules.DECAY_KINDS)
        if group["muon"] not in (None, True, False):
            raise TypeError(f"muon must be None, True or False, got {group['muon']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, deciding ``muon`` for a group without one from its tensors'
        dimensions (refused, changing nothing, where Muon is asked for a tensor that is not 2-d)."""
        params = param_group.get("params")
        if isinstance(params, (set, type(None))):  # refused by the base class, with torch's words
            return super().add_param_group(param_group)
        tensors = [params] if isinstance(params, Tensor) else list(params)
        muon = param_group.get("muon", self.defaults["muon"])
        matrices = sum(isinstance(p, Tensor) and p.dim() == 2 for p in tensors)
        if muon is None and 0 < matrices < len(tensors):
            raise ValueError(
                f"{type(self).__name__}: a param group mixes {matrices} 2-d tensor(s) with {len(tensors) - matrices} "
                "other(s); say which part Muon steps with the group key 'muon' (True: all 2-d; False: Adam), or "
                "build the groups with normctl.param_groups(model, muon=True)"
            )
        if muon and matrices < len(tensors):
            shapes = [tuple(p.shape) for p in tensors if p.dim() != 2][:3]
            raise ValueError(f"{type(self).__name__}: muon=True needs 2-d tensors; this group has shapes {shapes}")
        super().add_param_group({**param_group, "params": tensors, "muon": bool(matrices) if muon is None else muon})

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        if group["muon"]:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        else:
            state.update(adam_state(param, fused=self._use_fused(group, [param])))

    def _decay_ratio(self, group: dict) -> float:
        """The factor on λ this step: 1 (decoupled decay as AdamW's)."""
        return 1.0

    def _check_new_params(self, batches: list[Batch]) -> None:
        """Newton–Schulz needs each matrix whole: a Muon group's sharded DTensor (FSDP2) is refused
        before any state is made (DDP's replicated weights step as they are)."""
        for batch in batches:
            split = [tuple(p.shape) for p in batch.params if batch.group["muon"] and distributed.is_split(p)]
            if split:
                raise ValueError(
                    f"{type(self).__name__}: Muon orthogonalises each matrix whole, and shapes {split[:3]} are "
                    "sharded across ranks (FSDP2). Keep the Muon matrices replicated (DDP), or put them in Adam "
                    "groups (muon=False)."
                )

    def _update(self, batches: list[Batch]) -> None:
        self._attach_state(batches)
        for batch in batches:
            ratio = self._decay_ratio(batch.group)
            if batch.group["muon"]:
                muon_step_(batch, ratio, foreach=self._use_foreach(batch.group))
            else:
                decayed_adam_step_(self, batch, ratio)


def muon_step_(batch: Batch, ratio: float, *, foreach: bool) -> None:
    """torch.optim.Muon's step on one group's tensors, its decay scaled by ``ratio``."""
    group = batch.group
    lr, momentum = group["lr"], group["momentum"]
    rules.apply_decoupled_decay_(batch.params, group["decay"], lr * ratio, group["weight_decay"], foreach=foreach)
    for param, grad, state in zip(batch.params, batch.grads, batch.states):
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad, 1 - momentum)
        update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        orthogonal = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], NS_EPS)
        step_size = lr * muon_lr_scale(param.shape, group["adjust_lr_fn"])
        if isinstance(step_size, Tensor):  # a tensor lr (compiled step): no host read
            param.sub_(orthogonal.to(param.dtype) * step_size)
        else:
            param.add_(orthogonal, alpha=-step_size)


class MuonC(MuonAdamW):
    r""":class:`MuonAdamW` whose weight decay follows the learning-rate schedule on normalised
    layers, Muon's and Adam's alike (Defazio 2025)::

        θ ← (1 − γ_t·λ·γ_t/γ_max)·θ − γ_t·s·O           (normalised Muon matrices)

    A layer followed by a normalisation is scale-invariant whichever optimizer steps it, so the
    argument of :class:`AdamC` holds unchanged: with AdamW's fixed λ its steady ‖θ‖ shrinks as
    γ_t does, and ‖g‖/‖θ‖ rises at the end of the schedule; with λ·γ_t/γ_max the steady state
    stays that of the peak lr. ``param_groups(model, muon=True)`` marks the normalised matrices.

    Args:
        max_lr, normalized: as in :class:`AdamC` (γ_max, and the default for groups without a
            ``normalized`` key); the rest as in :class:`MuonAdamW`.

    Equals :class:`MuonAdamW` whenever γ_t = γ_max.
    """

    _describe_role = "muon_corrected"
    _corrected_keys = frozenset({"max_lr", "normalized"})

    def __init__(
        self, params: Any, lr: float | Tensor = 1e-3, *, max_lr: float | None = None, normalized: bool = False, **kwargs
    ) -> None:
        super().__init__(params, lr, max_lr=max_lr, normalized=normalized, **kwargs)
        warn_if_nothing_normalized(self)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_corrected_decay_keys(group)

    def _decay_ratio(self, group: dict) -> float:
        return corrected_lr_ratio(group)


def split_for_muon(params: Any, owner: str) -> Any:
    """Plain parameters as Muon recipes group them: 2-d tensors by Muon, the other tensors with 2
    or more dimensions by AdamW, those with fewer (gains, biases) by Adam without decay. Param
    groups (dicts) are returned as given."""
    if isinstance(params, Tensor):
        params = [params]
    params = list(params)
    if not params or not all(isinstance(p, Tensor) for p in params):
        return params
    # an FSDP1 flat parameter is 1-d: split by shape, Muon's matrices would silently become Adam's vectors
    distributed.check_supported(
        params, owner, "orthogonalises whole matrices", instead="Keep the model's matrices whole on every rank (DDP)."
    )
    matrices = [p for p in params if p.dim() == 2]
    others = [p for p in params if p.dim() > 2]
    vectors = [p for p in params if p.dim() < 2]
    warnings.warn(
        f"{owner} over plain parameters: {len(matrices)} 2-d tensor(s) step by Muon — embeddings and the output "
        f"layer among them, which Muon recipes leave to Adam — {len(others)} with more dimensions by AdamW, and "
        f"{len(vectors)} with fewer (norm gains, biases) by Adam without decay. Pass "
        "normctl.param_groups(model, muon=True) to keep embeddings and the output layer in Adam.",
        stacklevel=4,
    )
    groups = [
        {"params": matrices, "name": "matrices", "muon": True},
        {"params": others, "name": "other tensors", "muon": False},
        {"params": vectors, "name": "vectors", "muon": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
