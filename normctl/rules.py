"""The update rules behind normctl's optimizers, as small pure functions.

Each function computes one equation of the papers (see ``docs/math.md``):

* Eq. 3 of Loshchilov (2023), weight norm control::

      θ ← θ − k_t · (1 − τ_t / ‖θ‖) · θ          τ_t = r_t·‖θ_0‖ or an absolute norm

* the corrected weight decay of Defazio (2025)::

      λ̂_t = λ · γ_t / γ_max                      (on normalised layers only)

* the decoupled decay types l2 / l1 / min of Yu (2022).

Functions named ``*_`` modify their tensor arguments in place; the others return new values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from . import distributed

DecayKind = Literal["l2", "l1", "min"]
DECAY_KINDS: tuple[str, ...] = ("l2", "l1", "min")

RateScaling = Literal["none", "lr", "lr_ratio"]
RATE_SCALINGS: tuple[str, ...] = ("none", "lr", "lr_ratio")


# ---------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------


def norm_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype a norm of ``tensor`` is accumulated in: fp64 for fp64, else fp32.

    bf16/fp16 sums of squares overflow or lose most of their digits on large layers, so
    norms of half-precision weights are always accumulated in fp32.
    """
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def tensor_norms(tensors: Sequence[Tensor], *, foreach: bool = True) -> list[Tensor]:
    """The L2 (Frobenius) norm of each tensor, as 0-d tensors in :func:`norm_dtype`.

    The foreach path issues one ``torch._foreach_norm`` per (device, dtype) bucket instead of
    one kernel per tensor, and sums CPU bfloat16 buckets with the one-pass step's C++ kernel
    (built at first use, like AdamWN's); both paths return the same values (bfloat16: to float32
    rounding, summed in another order). Sharded tensors (DTensors, FSDP2) get the norm of the
    full tensor: the shards' sums of squares are all-reduced.
    """
    pieces = [distributed.local(t) for t in tensors]
    norms = _local_norms(pieces, foreach=foreach)
    if not any(distributed.is_sharded(t) for t in tensors):
        return norms
    squares = distributed.reduce_across_shards([n.square() for n in norms], tensors, "sum")
    return [s.sqrt() if distributed.is_sharded(t) else n for s, n, t in zip(squares, norms, tensors)]


def _local_norms(tensors: Sequence[Tensor], *, foreach: bool) -> list[Tensor]:
    if not foreach:
        return [torch.linalg.vector_norm(t, dtype=norm_dtype(t)) for t in tensors]
    norms: list[Tensor | None] = [None] * len(tensors)
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    for (device, dtype), indices in buckets.items():
        bucket = [tensors[i] for i in indices]
        bucket_norms: Sequence[Tensor] | None = None
        if (device.type, dtype) == ("cpu", torch.bfloat16):
            bucket_norms = _bfloat16_cpu_norms(bucket)
        if bucket_norms is None:
            bucket_norms = torch._foreach_norm(bucket, 2, dtype=norm_dtype(bucket[0]))
        for i, n in zip(indices, bucket_norms):
            norms[i] = n
    return norms  # type: ignore[return-value]


def _bfloat16_cpu_norms(tensors: list[Tensor]) -> list[Tensor] | None:
    # torch sums a bfloat16 norm in float32 only through a float32 copy of the tensor (about 10×
    # the norm's own time on the CPU); the one-pass step's C++ kernel sums in float32 as it reads
    from .optim import _one_pass_cpu

    return _one_pass_cpu.bfloat16_norms(tensors)


def inner_products(first: Sequence[Tensor], second: Sequence[Tensor]) -> list[Tensor]:
    """⟨a_i, b_i⟩ for each pair, as 0-d tensors in :func:`norm_dtype` (of full tensors where they
    are sharded: the shards' sums are all-reduced)."""
    local = [
        (distributed.local(a).to(norm_dtype(a)) * distributed.local(b).to(norm_dtype(a))).sum()
        for a, b in zip(first, second)
    ]
    return distributed.reduce_across_shards(local, first, "sum")


def combined_norm(norms: Sequence[Tensor]) -> Tensor:
    """‖(θ_1, …, θ_n)‖ = sqrt(Σ ‖θ_i‖²): one norm over several tensors (group/global scope)."""
    if not norms:
        return torch.zeros(())
    dtype = norms[0].dtype
    for n in norms[1:]:
        dtype = torch.promote_types(dtype, n.dtype)
    device = norms[0].device
    return torch.stack([n.to(device=device, dtype=dtype) for n in norms]).square().sum().sqrt()


# ---------------------------------------------------------------------------------------------
# Eq. 3: weight norm control
# ---------------------------------------------------------------------------------------------


def norm_control_factor(norm: Tensor, target_norm: Tensor | float, rate: float) -> Tensor:
    """The factor Eq. 3 multiplies θ by: ``1 − k·(1 − τ/‖θ‖)``.

    ``rate`` is k_t in [0, 1]; ``target_norm`` is τ_t, the norm θ is pulled toward. Above
    target the factor is < 1 (the weight shrinks), below target it is > 1 (the weight grows),
    and k = 1 rescales θ onto the target norm in one step.

    A zero weight has no direction to rescale, so its factor is 1 (left as it is) instead of
    the ``inf``/NaN that τ/0 would give; so has a weight so small that τ/‖θ‖ overflows.
    """
    ratio = target_norm / norm
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
    return 1 - rate * (1 - ratio)


def adamw_equilibrium_norm(update_norm_sq: float, lr: float, weight_decay: float) -> float:
    """‖θ*‖, the norm at which AdamW's decay removes as much as its updates add.

    One AdamW step is θ ← (1 − γλ)·θ − γ·u, so ‖θ‖² ← (1 − γλ)²‖θ‖² − 2γ(1 − γλ)⟨θ, u⟩ + γ²‖u‖².
    Once the norm has settled the update is on average orthogonal to the weight (⟨θ, u⟩ ≈ 0), and
    ‖θ‖² stops changing where (1 − (1 − γλ)²)·‖θ‖² = γ²‖u‖²::

        ‖θ*‖ = sqrt(γ·‖u‖² / (λ·(2 − γλ)))  ≈  sqrt(γ / (2λ))·‖u‖

    ``update_norm_sq`` is ‖u‖² (the update per unit of lr), ``lr`` γ, ``weight_decay`` λ."""
    return math.sqrt(lr * update_norm_sq / (weight_decay * (2 - lr * weight_decay)))


def decayed_steady_norm(update_norm: float, lr: float, weight_decay: float, cosine: float = 0.0) -> float:
    """‖θ*‖ of decoupled decay at a constant lr when the update keeps a cosine c = cos(θ, −u) with
    the weight: the fixed point of :func:`decayed_norm_sq_after`'s step, f = 1 − γλ::

        (1 − f²)·‖θ‖² − 2f·γ·c·‖u‖·‖θ‖ − γ²‖u‖² = 0
        ‖θ*‖ = γ‖u‖·(f·c + sqrt(f²c² + 1 − f²)) / (1 − f²)

    c = 0 is :func:`adamw_equilibrium_norm`. For Muon (u = s·O, s its ``adjust_lr_fn`` factor)
    c is not 0: momentum makes successive orthogonalised updates alike, so each points partly
    along the weight the earlier ones built — with noise gradients and momentum 0.95, c ≈ 0.16
    and ‖θ*‖ is 5× the orthogonal form, and this fixed point is exact (docs/math.md)."""
    f = 1 - lr * weight_decay
    return lr * update_norm * (f * cosine + math.sqrt(f * f * cosine * cosine + 1 - f * f)) / (1 - f * f)


def adamw_norm_sq_after(norm_sq: float, update_norm_sq: float, lrs: Iterable[float], weight_decay: float) -> float:
    """‖θ_T‖², AdamW's squared norm after steps at learning rates ``lrs`` from ‖θ‖² = ``norm_sq``:
    the step of :func:`adamw_equilibrium_norm` with ⟨θ, u⟩ ≈ 0, iterated::

        ‖θ_{t+1}‖² = (1 − γ_t·λ)²·‖θ_t‖² + γ_t²·‖u‖²

    It tends to ‖θ*‖² when the run is long against 1/(2γλ) and stays near ‖θ‖² when it is short
    (docs/math.md, "a run of known length"). ``target="auto"``'s rule is this at its default
    alignment a = 0 (:func:`aligned_norm_sq_after`)."""
    return decayed_norm_sq_after(norm_sq, update_norm_sq, ((lr, weight_decay) for lr in lrs))


def decayed_norm_sq_after(
    norm_sq: float, update_norm_sq: float, steps: Iterable[tuple[float, float]], cosine: float = 0.0
) -> float:
    """:func:`adamw_norm_sq_after` with a decay of its own at each step, ``steps`` the pairs
    (γ_t, λ_t): AdamC's λ_t = λ·γ_t/γ_max, or AdamW's constant λ; and where the update is not
    orthogonal to the weight, its measured ``cosine`` c = cos(θ, −u) (> 0: outward)::

        ‖θ_{t+1}‖² = f²·‖θ_t‖² + 2f·γ_t·c·‖θ_t‖·‖u‖ + γ_t²·‖u‖²,      f = 1 − γ_t·λ_t

    What ``NormMonitor.forecast`` predicts from the measured ‖u‖² and c (``target="auto"`` takes
    :func:`aligned_norm_sq_after` instead, which at a = 0 is this at c = 0)."""
    end = norm_sq
    for end in decayed_norm_sq_path(norm_sq, update_norm_sq, steps, cosine):  # noqa: B007 (the last one)
        pass
    return end


def decayed_norm_sq_path(
    norm_sq: float, update_norm_sq: float, steps: Iterable[tuple[float, float]], cosine: float = 0.0
) -> Iterator[float]:
    """The squared norm after each of ``steps`` under :func:`decayed_norm_sq_after`'s recurrence:
    the path a forecast reads the end-of-run rise of ‖g‖/‖θ‖ from."""
    update_norm = math.sqrt(update_norm_sq)
    for lr, weight_decay in steps:
        f = 1 - lr * weight_decay
        norm_sq = f * f * norm_sq + 2 * f * lr * cosine * math.sqrt(norm_sq) * update_norm + lr * lr * update_norm_sq
        yield norm_sq


def decay_coefficients(steps: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(P, S) of the decay recurrence at c = 0 over ``steps`` (pairs γ_t, λ_t), which is linear in
    the start's squared norm and in ‖u‖²::

        ‖θ_b‖² = P·‖θ_a‖² + S·‖u‖²,      P = Π f_t²,  S = Σ_t γ_t²·Π_{s>t} f_s²,  f_t = 1 − γ_t·λ_t

    — one pass over a schedule for any number of tensors that share it."""
    shrink, added = 1.0, 0.0
    for lr, weight_decay in steps:
        f_sq = (1 - lr * weight_decay) ** 2
        shrink, added = shrink * f_sq, added * f_sq + lr * lr
    return shrink, added


def update_sq_between(norm_sq_start: float, norm_sq_end: float, steps: Iterable[tuple[float, float]]) -> float:
    """The inverse of :func:`decayed_norm_sq_after` at c = 0: the constant ‖u‖² that takes the
    squared norm from ``norm_sq_start`` to ``norm_sq_end`` over ``steps`` (pairs γ_t, λ_t), from
    :func:`decay_coefficients`: (‖θ_b‖² − P·‖θ_a‖²)/S — the effective update, which carries
    whatever alignment the updates had with the weight (it equals ‖u‖²·(1 + 2f·a) of
    :func:`aligned_norm_sq_after`). It is negative where the norm fell faster than decay alone
    would take it (the loss pulling the weights inward), and NaN over steps that neither decay
    nor move anything (S = 0)."""
    shrink, added = decay_coefficients(steps)
    return (norm_sq_end - shrink * norm_sq_start) / added if added > 0 else math.nan


def aligned_norm_sq_after(
    norm_sq: float, update_norm_sq: float, steps: Iterable[tuple[float, float]], alignment: float
) -> float:
    """:func:`decayed_norm_sq_after` where the update's inner product with the weight comes from
    momentum rather than from the norm: ⟨θ_t, −u_t⟩ = γ_t·a·‖u‖², with ``alignment`` a measured
    (``target="auto"``'s window), so that::

        ‖θ_{t+1}‖² = f²·‖θ_t‖² + γ_t²·‖u‖²·(1 + 2f·a),      f = 1 − γ_t·λ_t

    Momentum μ makes each update a sum over the last ~1/(1 − μ) gradients, so the update and the
    weight those updates built share a component of size γ·Σ_k⟨u_{t−k}, u_t⟩, whatever ‖θ‖ is:
    the aligned part acts as a larger update, and the norm settles sqrt(1 + 2a)× above the a = 0
    form (:func:`aligned_steady_norm`). a < 0 (the loss pulling the weights inward, an inner
    product that shrinks with the norm) is taken as 0: the form has no sound fixed point there."""
    a = max(alignment, 0.0)
    for lr, weight_decay in steps:
        f = 1 - lr * weight_decay
        norm_sq = f * f * norm_sq + lr * lr * update_norm_sq * (1 + 2 * f * a)
    return norm_sq


def aligned_steady_norm(update_norm_sq: float, lr: float, weight_decay: float, alignment: float) -> float:
    """The fixed point of :func:`aligned_norm_sq_after` at a constant lr:
    ‖θ*‖ = sqrt(γ·‖u‖²·(1 + 2f·a) / (λ·(2 − γλ))) — :func:`adamw_equilibrium_norm` of the larger
    update."""
    f = 1 - lr * weight_decay
    return adamw_equilibrium_norm(update_norm_sq * (1 + 2 * f * max(alignment, 0.0)), lr, weight_decay)


def control_rate(rate: float, scaling: str, lr: float, max_lr: float) -> float:
    """k_t for the three forms of line 13 of Algorithm 1 (Loshchilov 2023).

    * ``"none"`` — 13.c, Eq. 3 as written: k_t is the rate itself.
    * ``"lr"`` — 13.a, PyTorch's AdamW: k_t = γ_t·rate (with target 0 and rate = λ this is
      exactly ``torch.optim.AdamW(weight_decay=λ)``).
    * ``"lr_ratio"`` — 13.b, the original AdamW: k_t = (γ_t/γ_max)·rate = η_t·rate, the rate
      follows the schedule multiplier but not the base learning rate.
    """
    if scaling == "none":
        return rate
    if scaling == "lr":
        return rate * lr
    if scaling == "lr_ratio":
        return rate * (lr / max_lr)
    raise ValueError(f"rate_scaling must be one of {RATE_SCALINGS}, got {scaling!r}")


# ---------------------------------------------------------------------------------------------
# Corrected weight decay (Defazio 2025, Section 5)
# ---------------------------------------------------------------------------------------------


def corrected_decay_scale(lr: float, max_lr: float) -> float:
    """γ_t/γ_max, the factor the corrected weight decay puts on a normalised layer's decay.

    AdamC/SGDC replace λ by λ̂_t = λ·γ_t/γ_max (Defazio 2025, §5); the decoupled term γ_t·λ̂_t·θ
    is then (γ_t²/γ_max)·λ·θ, and the steady state ‖g‖/‖θ‖ = sqrt(2λ/γ_max) no longer moves with
    the schedule. normctl scales the whole decay term D(θ) by this factor, which for the l2 and
    l1 types is exactly λ → λ̂. At γ_t = γ_max it is exactly 1.0, so a constant schedule gives
    AdamW/SGD bit for bit.
    """
    return lr / max_lr


# ---------------------------------------------------------------------------------------------
# Decay types l2 / l1 / min (Yu 2022)
# ---------------------------------------------------------------------------------------------


def decay_term(param: Tensor, kind: str, weight_decay: float) -> Tensor:
    """D(θ), the direction a decay of type ``kind`` pulls θ along (θ ← θ − γ·D(θ)).

    * ``l2``:  D = λ·θ
    * ``l1``:  D = λ·sign(θ)
    * ``min``: D = min_i |θ_i| · sign(θ) — the smallest magnitude of the whole tensor. The
      original study does not use λ in this type; neither do we, so its strength is set by
      the learning rate alone (it is still only applied to groups with ``weight_decay > 0``).
    """
    if kind == "l2":
        return param * weight_decay
    if kind == "l1":
        return param.sign() * weight_decay
    if kind == "min":
        if param.numel() == 0:
            return torch.zeros_like(param)
        return param.sign() * param.abs().min()
    raise ValueError(f"decay must be one of {DECAY_KINDS}, got {kind!r}")


def apply_decoupled_decay_(
    params: Sequence[Tensor], kind: str, lr: float, weight_decay: float, *, foreach: bool = True
) -> None:
    """θ ← θ − lr·D(θ) for every tensor: AdamW's decoupled decay on the pre-step weight.

    The l2 case is the multiplication ``θ·(1 − lr·λ)`` that ``torch.optim.AdamW`` performs, in
    the same floating-point order, so it is bit-compatible with torch.
    """
    if weight_decay == 0 or not params:
        return
    if kind == "l2":
        if foreach:
            torch._foreach_mul_(list(params), 1 - lr * weight_decay)
        else:
            for p in params:
                p.mul_(1 - lr * weight_decay)
        return
    for p in params:  # l1/min: sign-based, no foreach kernel; both paths are this loop
        p.sub_(decay_term(p, kind, weight_decay), alpha=lr)


def add_coupled_decay(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    kind: str,
    weight_decay: float,
    *,
    scale: float = 1.0,
    foreach: bool = True,
) -> list[Tensor]:
    """g + scale·D(θ) for every tensor: SGD's L2-style decay folded into the gradient.

    Returns new tensors (the caller's ``.grad`` is never modified). The l2 case is
    ``g.add(θ, alpha=λ)``, the operation ``torch.optim.SGD`` performs.
    """
    if weight_decay == 0:
        return list(grads)
    if kind == "l2":
        if isinstance(scale, Tensor):  # a compiled step's γ_t/γ_max: alpha takes numbers only
            return list(torch._foreach_add(list(grads), torch._foreach_mul(list(params), weight_decay * scale)))
        if foreach:
            return list(torch._foreach_add(list(grads), list(params), alpha=weight_decay * scale))
        return [g.add(p, alpha=weight_decay * scale) for g, p in zip(grads, params)]
    if isinstance(scale, Tensor):
        return [g.add(decay_term(p, kind, weight_decay) * scale) for g, p in zip(grads, params)]
    return [g.add(decay_term(p, kind, weight_decay), alpha=scale) for g, p in zip(grads, params)]
