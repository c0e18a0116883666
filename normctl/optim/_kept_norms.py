"""‖θ‖ of each tensor as a one-pass step left it, so the next step needs no norm pass.

A kept norm is trusted only while the tensor is still the step's output: its version counter
(bumped by every in-place torch op — ``load_state_dict``, ``p.mul_()`` under ``no_grad``,
another optimizer's step) and its storage address must be those recorded after the step.
Anything else is measured afresh. Writes that bypass the version counter (``p.data.copy_(x)``)
are not seen: change weights between steps through ordinary in-place ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import rules


class KeptTensorNorms:
    def __init__(self) -> None:
        self._entries: dict[Tensor, tuple[int, int, Tensor]] = {}

    def tensor_norms(self, tensors: Sequence[Tensor], *, foreach: bool = True) -> list[Tensor]:
        """Like :func:`normctl.rules.tensor_norms`, reading kept norms where they are still valid."""
        norms: list[Tensor | None] = [None] * len(tensors)
        stale = []
        for i, p in enumerate(tensors):
            entry = self._entries.get(p)
            if entry is not None and entry[:2] == (p._version, p.data_ptr()):
                norms[i] = entry[2]
            else:
                stale.append(i)
        if stale:
            for i, norm in zip(stale, rules.tensor_norms([tensors[i] for i in stale], foreach=foreach)):
                norms[i] = norm
        return norms  # type: ignore[return-value]

    def keep(self, params: Sequence[Tensor], norm_sq: Tensor) -> None:
        """Record ‖θ_i‖² (a vector, one per tensor) as measured while the step wrote θ_i."""
        norms = norm_sq.sqrt().to(torch.float32).unbind()
        for p, norm in zip(params, norms):
            self._entries[p] = (p._version, p.data_ptr(), norm)
