"""‖θ‖ of each tensor as a one-pass step left it, so the next step needs no norm pass.

Both one-pass kernels — C++ on the CPU, Triton on CUDA — add up θ_new² while they store θ_new
and hand back a vector of ‖θ_i‖², one per tensor of the batch. :class:`KeptNorms` keeps that
vector and serves it to the next step: per tensor (Eq. 3's factors) or, when the next batch is
the very same tensors, as the vector itself (the CUDA kernel reads it on the device, no stack).

A kept norm is trusted only while the tensor is still the step's output: its version counter
(bumped by every in-place torch op — ``load_state_dict``, ``p.mul_()`` under ``no_grad``,
another optimizer's step) and its storage address must be those recorded after the step, and
on the CPU its first element too. Anything else is measured afresh.

The first element is there for writes through ``p.data`` (EMA utilities, framework hooks),
which change neither the version counter nor the storage: a write that changes the first
element (a rescale, a copy, an average) is seen, and a warning says once that the weights were
changed behind the optimizer's back. A write that leaves the first element as it was (a slice
elsewhere) is not seen, for one step only: the kernel measures the weights it writes, so the
norm it keeps after that step is right again. Reading the first elements costs one C++ call per
step on the CPU; on CUDA it would cost a device-to-host sync every step, which the CUDA kernel
exists to avoid, so there only the version counter and the storage are checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from .. import rules
from . import _one_pass_cpu


def _first_elements(tensors: Sequence[Tensor]) -> Tensor:
    """θ_i[0] of each tensor (float32, 0 when empty): one C++ call where the CPU kernel is loaded,
    a view per tensor otherwise (read twice a step, which shows on models of many small tensors)."""
    firsts = _one_pass_cpu.first_elements(tensors)
    if firsts is not None:
        return firsts
    return torch.stack([p.detach().view(-1)[0] if p.numel() else p.new_zeros(()) for p in tensors]).float()


@dataclass
class _Kept:
    """One kernel call over a batch of tensors: their ‖θ_i‖² (a vector), their first elements as
    the step left them (CPU only) and, read lazily, their norms."""

    norm_sq: Tensor
    firsts: Tensor | None
    _norms: list[Tensor] = field(default_factory=list)

    def norm(self, position: int) -> Tensor:
        if not self._norms:
            self._norms = list(self.norm_sq.sqrt().to(torch.float32).unbind())
        return self._norms[position]


class _Entry(NamedTuple):  # a tuple: one is made per tensor per step
    version: int
    address: int
    kept: _Kept
    position: int  # in the kept batch


def _one_batch(entries: Sequence[_Entry | None], kept: _Kept, size: int) -> bool:
    """Whether ``entries`` are the whole of ``kept``'s batch, valid and in order (its vectors then
    serve as they are)."""
    return len(entries) == size and all(
        e is not None and e.kept is kept and e.position == i for i, e in enumerate(entries)
    )


class KeptNorms:
    def __init__(self) -> None:
        self._entries: dict[Tensor, _Entry] = {}
        self.warned = False

    def keep(self, params: Sequence[Tensor], norm_sq: Tensor) -> None:
        """Record ‖θ_i‖² (a vector, one per tensor) as measured while the step wrote θ_i."""
        on_cpu = all(p.device.type == "cpu" for p in params)
        kept = _Kept(norm_sq, _first_elements(params) if on_cpu else None)
        for position, p in enumerate(params):
            self._entries[p] = _Entry(p._version, p.data_ptr(), kept, position)

    def tensor_norms(self, tensors: Sequence[Tensor], *, foreach: bool = True) -> list[Tensor]:
        """Like :func:`normctl.rules.tensor_norms`, reading kept norms where they are still valid."""
        valid = self._valid(tensors)
        norms: list[Tensor | None] = [e.kept.norm(e.position) if e is not None else None for e in valid]
        stale = [i for i, n in enumerate(norms) if n is None]
        if stale:
            for i, norm in zip(stale, rules.tensor_norms([tensors[i] for i in stale], foreach=foreach)):
                norms[i] = norm
        return norms  # type: ignore[return-value]

    def norm_sq_vector(self, tensors: Sequence[Tensor]) -> Tensor:
        """‖θ_i‖² of ``tensors`` as one float32 vector: the kernel's own vector when these are
        exactly the tensors it stepped last, in order and all unchanged; else assembled."""
        valid = self._valid(tensors)
        if valid and valid[0] is not None and valid[0].kept.norm_sq.dtype == torch.float32:
            kept = valid[0].kept
            if _one_batch(valid, kept, kept.norm_sq.numel()):
                return kept.norm_sq
        return torch.stack(self.tensor_norms(tensors)).to(torch.float32).square()

    def clear(self) -> None:
        """Forget every kept norm: the next step measures them all."""
        self._entries.clear()

    def _valid(self, tensors: Sequence[Tensor]) -> list[_Entry | None]:
        """Each tensor's entry while its version, storage and (on the CPU) first element hold."""
        valid: list[_Entry | None] = []
        for p in tensors:
            entry = self._entries.get(p)
            fresh = entry is not None and entry.version == p._version and entry.address == p.data_ptr()
            valid.append(entry if fresh else None)
        checked = [(i, e) for i, e in enumerate(valid) if e is not None and e.kept.firsts is not None]
        if checked:
            entries = [e for _, e in checked]
            kept = entries[0].kept
            if kept.firsts is not None and _one_batch(entries, kept, kept.firsts.numel()):
                then = kept.firsts
            else:
                then = torch.stack([e.kept.firsts[e.position] for e in entries])  # type: ignore[index]
            changed = (_first_elements([tensors[i] for i, _ in checked]) != then).tolist()
            if any(changed):
                self._warn_once()
            for (i, _), is_changed in zip(checked, changed):
                if is_changed:
                    valid[i] = None
        return valid

    def _warn_once(self) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(
                "normctl: weights changed between steps without bumping their version counter (a write "
                "through p.data?); their norms were measured afresh. Writes that leave a tensor's first "
                "element unchanged are not seen: change weights with in-place ops on the parameters under "
                "torch.no_grad() instead.",
                stacklevel=6,
            )
