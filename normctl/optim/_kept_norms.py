"""‖θ‖ of each tensor as a one-pass step left it, so the next step needs no norm pass.

A kept norm is trusted only while the tensor is still the step's output: its version counter
(bumped by every in-place torch op — ``load_state_dict``, ``p.mul_()`` under ``no_grad``,
another optimizer's step), its storage address, and its first element must be those recorded
after the step. Anything else is measured afresh.

The first element is there for writes through ``p.data`` (EMA utilities, framework hooks),
which change neither the version counter nor the storage: a write that changes the first
element (a rescale, a copy, an average) is seen, and a warning says once that the weights were
changed behind the optimizer's back. A write that leaves the first element as it was (a slice
elsewhere) is not seen, for one step only: the kernel measures the weights it writes, so the
norm it keeps after that step is right again. Reading the first elements costs a stack of
scalars per step, not a pass over the weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import rules


def _first_elements(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([p.detach().view(-1)[0] if p.numel() else p.new_zeros(()) for p in tensors]).float()


class KeptTensorNorms:
    def __init__(self) -> None:
        # tensor -> (version, storage address, ‖θ‖, θ's first element), as the step left it
        self._entries: dict[Tensor, tuple[int, int, Tensor, Tensor]] = {}
        self.warned = False

    def tensor_norms(self, tensors: Sequence[Tensor], *, foreach: bool = True) -> list[Tensor]:
        """Like :func:`normctl.rules.tensor_norms`, reading kept norms where they are still valid."""
        norms: list[Tensor | None] = [None] * len(tensors)
        kept = []
        for i, p in enumerate(tensors):
            entry = self._entries.get(p)
            if entry is not None and entry[:2] == (p._version, p.data_ptr()):
                kept.append(i)
        if kept:
            then = torch.stack([self._entries[tensors[i]][3] for i in kept])
            changed = (_first_elements([tensors[i] for i in kept]) != then).tolist()
            if any(changed):
                self._warn_once()
            for i, is_changed in zip(kept, changed):
                if not is_changed:
                    norms[i] = self._entries[tensors[i]][2]
        stale = [i for i, n in enumerate(norms) if n is None]
        if stale:
            for i, norm in zip(stale, rules.tensor_norms([tensors[i] for i in stale], foreach=foreach)):
                norms[i] = norm
        return norms  # type: ignore[return-value]

    def keep(self, params: Sequence[Tensor], norm_sq: Tensor) -> None:
        """Record ‖θ_i‖² (a vector, one per tensor) as measured while the step wrote θ_i."""
        norms = norm_sq.sqrt().to(torch.float32).unbind()
        firsts = _first_elements(params).unbind()
        for p, norm, first in zip(params, norms, firsts):
            self._entries[p] = (p._version, p.data_ptr(), norm, first)

    def clear(self) -> None:
        """Forget every kept norm: the next step measures them all."""
        self._entries.clear()

    def _warn_once(self) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(
                "normctl: weights changed between steps without bumping their version counter (a write "
                "through p.data?); AdamWN measured their norms afresh. Writes that leave a tensor's first "
                "element unchanged are not seen: change weights with in-place ops on the parameters under "
                "torch.no_grad() instead.",
                stacklevel=5,
            )
