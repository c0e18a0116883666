"""Several processes for one run: ``torchrun`` launch, DDP or FSDP2 wrapping, DCP checkpoints.

The harness is the only user; the optimizers and the monitor need nothing of this module
(they reduce DTensor norms themselves, see :mod:`normctl.distributed`).

Launch (one machine, N processes; CPU runs use gloo, CUDA runs NCCL)::

    torchrun --standalone --nproc_per_node=N -m normctl_lab.cli train CONFIG --set parallel=fsdp

Several machines: the same command on each with ``--nnodes=M --node_rank=i
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` in place of ``--standalone``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size and the device it computes on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str = "auto") -> World:
    """Join the process group ``torchrun`` describes in the environment (a single process
    when there is none). ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=target)


def close_world(world: World) -> None:
    """Leave the process group: left to interpreter shutdown, gloo's teardown can abort a worker
    ("terminate called without an active exception") after the run has finished."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, mode: str, world: World) -> nn.Module:
    """Replicate (``"ddp"``) or shard (``"fsdp"``: FSDP2 ``fully_shard`` on every block that
    holds parameters of its own, then on the root) ``model`` across the world's processes.

    The returned module is what forward/backward run through. Build param groups and the
    monitor from :func:`unwrap` of it: FSDP2 keeps the module (its parameters become
    DTensors), DDP wraps it.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    if not world.distributed:
        return model
    if mode == "ddp":
        ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in _shard_units(model):
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (entries of ``nn.ModuleList``/``nn.Sequential`` containers), each
    its own FSDP2 unit so that only one block's full parameters exist at a time."""
    units = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and module is not model:
            units += [child for child in module.children() if any(True for _ in child.parameters())]
    return units[::-1]  # innermost first: fully_shard goes bottom-up


def local_slice(batch: tuple[torch.Tensor, ...], world: World) -> tuple[torch.Tensor, ...]:
    """This rank's rows of a global batch that every rank drew with the same generator: the
    ranks' mean gradients average to the single-process gradient of the whole batch."""
    if not world.distributed:
        return batch
    rows = batch[0].shape[0]
    if rows % world.size:
        raise ValueError(f"batch_size {rows} must be divisible by the number of processes {world.size}")
    per = rows // world.size
    return tuple(t[world.rank * per : (world.rank + 1) * per] for t in batch)


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.size


# -- distributed checkpoints ------------------------------------------------------------------


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Model and optimizer through ``torch.distributed.checkpoint`` (each rank writes its
    shards), ``meta`` (plain Python state of the loop) by rank 0; the directory replaces the
    previous checkpoint only once complete."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if dist.get_rank() == 0:
        torch.save(meta, tmp / "meta.pt")
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_sharded` wrote, resharding to this world's size; returns meta."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return torch.load(path / "meta.pt", weights_only=True)
