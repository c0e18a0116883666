"""Sharded parameters: full-tensor reductions for DTensors (FSDP2, tensor parallel).

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor`` whose rank-local
piece is a slice of the tensor. The elementwise parts of an optimizer step (Adam, decay,
multiplying by Eq. 3's per-tensor factor) are correct on the slices as they are, and
DTensor's own dispatch runs them. What is *not* correct on a slice is a norm: ‖θ‖ of a
shard is not ‖θ‖. This module turns rank-local reductions into full-tensor ones:

* sums (of squares) are all-reduced over every mesh dimension along which the tensor is
  ``Shard``-ed — ``Replicate`` dimensions hold copies and are not summed;
* max/min likewise with MAX/MIN;
* all values sharing a mesh and a sharding travel in one collective, so a step costs one
  all-reduce per (mesh, sharding) pair, not one per tensor.

Replicated training (DDP) needs none of this: every rank holds the whole tensor.

Set-ups whose parameters are not tensors of their own are refused (:func:`check_supported`):
FSDP1's ``FlatParameter`` concatenates many tensors into one flat shard and DeepSpeed ZeRO-3
partitions parameters behind its own handles; a per-tensor norm of either is meaningless.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor

try:  # DTensor is public from torch 2.4; keep normctl importable where it is missing
    from torch.distributed.tensor import DTensor, Partial, Shard
except ImportError:  # pragma: no cover - torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN} if dist.is_available() else {}


def is_sharded(tensor: Any) -> TypeGuard[DTensor]:
    """True for a DTensor (its rank-local data is only part of the tensor, or a copy of it)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """The rank-local data of a DTensor (sharing its storage); any other tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def reduce_across_shards(values: Sequence[Tensor], tensors: Sequence[Tensor], op: str = "sum") -> list[Tensor]:
    """Combine per-rank 0-d ``values`` computed from the local shards of ``tensors``.

    ``values[i]`` is a reduction (``op``: ``"sum"``, ``"max"`` or ``"min"``) of the local
    piece of ``tensors[i]``; the result is the same reduction over the full tensor, identical
    on every rank. Values of tensors that are not DTensors are returned unchanged.
    """
    out = list(values)
    groups: dict[tuple[Any, tuple[int, ...]], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        if is_sharded(t):
            groups[(t.device_mesh, _sharded_mesh_dims(t))].append(i)
    for (mesh, mesh_dims), indices in groups.items():
        if not mesh_dims:
            continue  # replicated on every mesh dimension: the local value is the full one
        stacked = torch.stack([out[i] for i in indices])
        for d in mesh_dims:
            dist.all_reduce(stacked, op=_OPS[op], group=mesh.get_group(d))
        for i, v in zip(indices, stacked.unbind()):
            out[i] = v
    return out


def all_agree(flag: Tensor, tensors: Sequence[Tensor]) -> bool:
    """True when a per-rank boolean ``flag`` is true on every rank that holds shards of
    ``tensors`` (a NaN in one rank's slice of a gradient must stop the step on all ranks), or on
    every rank of the default process group where the tensors are replicated (DDP: a rank whose
    gradients turned non-finite after the all-reduce must not let the replicas part)."""
    meshes = {t.device_mesh for t in tensors if is_sharded(t)}
    value = flag.to(torch.int32).reshape(1)
    if not meshes:
        # replicated (DDP): every rank steps its copy, so every rank must take the same decision
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())
    for mesh in meshes:
        for d in range(mesh.ndim):
            dist.all_reduce(value, op=dist.ReduceOp.MIN, group=mesh.get_group(d))
    return bool(value.item())


def check_supported(
    params: Sequence[Any], owner: str, needs: str = "computes per-tensor norms", instead: str | None = None
) -> None:
    """Refuse parameters that are not whole tensors (FSDP1, DeepSpeed ZeRO-3): ``owner`` ``needs``
    them (per-tensor norms; Muon's whole matrices); ``instead`` says what to use (default: FSDP2,
    whose DTensor parameters normctl reduces to full-tensor norms)."""
    for p in params:
        if getattr(p, "_fsdp_flattened", False) or type(p).__name__ == "FlatParameter":
            raise TypeError(
                f"{owner} {needs}, which FSDP1's flat parameters (FullyShardedDataParallel) do not have: each "
                "rank holds a slice of many tensors concatenated. "
                + (
                    instead
                    or "Shard the model with FSDP2 (torch.distributed.fsdp.fully_shard), whose DTensor "
                    "parameters normctl reduces to full-tensor norms."
                )
            )
        if hasattr(p, "ds_id") or hasattr(p, "ds_tensor"):
            raise TypeError(
                f"{owner} {needs}, which DeepSpeed ZeRO-3's partitioned parameters do not expose. "
                + (instead or "Use FSDP2 (torch.distributed.fsdp.fully_shard) or ZeRO stage 0 (DDP).")
            )


def is_split(tensor: Any) -> bool:
    """True for a DTensor sharded on some mesh dimension: no rank holds it whole."""
    return is_sharded(tensor) and bool(_sharded_mesh_dims(tensor))


def _sharded_mesh_dims(tensor: Any) -> tuple[int, ...]:
    dims = []
    for d, placement in enumerate(tensor.placements):
        if isinstance(placement, Partial):
            raise ValueError(
                f"a parameter with a Partial placement on mesh dimension {d} holds unreduced "
                "partial values, not a slice of the tensor; its norm is undefined"
            )
        if isinstance(placement, Shard):
            dims.append(d)
    return tuple(dims)


def process_rank() -> int:
    """This process's rank in the default process group (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_writer(rank: int | None) -> bool:
    """Whether this process writes what a run logs: ``rank`` None means every process does (each
    to a directory of its own), else only the process of that rank (rank 0 by default)."""
    return rank is None or process_rank() == rank
