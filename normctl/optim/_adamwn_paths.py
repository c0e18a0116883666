"""Which kernel takes an AdamWN step — decided in one place, with the reason — and each kernel
behind one signature, ``step(batch, factors, context) -> kept ‖θ‖² or None``:

* ``cuda_one_pass`` — one Triton kernel over every tensor of the batch: Eq. 3 (its factors
  computed in the kernel from the kept norms), Adam's step, and ‖θ‖² as it wrote θ;
* ``cpu_one_pass`` — the same in C++/OpenMP, with Eq. 3's factors given;
* ``torch_fused`` — torch's fused AdamW, Eq. 3 folded in as a per-tensor decay λ_i = (1 − f_i)/γ;
* ``foreach`` / ``reference`` — Eq. 3 as a scale, then Adam's step with ``torch._foreach_*`` ops
  or the readable per-tensor loop.

The two one-pass paths return the ‖θ_i‖² they measured while writing θ, which the optimizer keeps
for the next step (:class:`._kept_norms.KeptNorms`, one cache for both). All paths are tested
equal to ``reference`` (``tests/test_fused.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rules
from . import _control as control
from . import _one_pass, _one_pass_cpu
from ._adam import adam_update, fused_adamw_
from ._base import Batch
from ._kept_norms import KeptNorms


class Path(enum.Enum):
    CUDA_ONE_PASS = "cuda_one_pass"
    CPU_ONE_PASS = "cpu_one_pass"
    TORCH_FUSED = "torch_fused"
    FOREACH = "foreach"
    REFERENCE = "reference"


@dataclass(frozen=True)
class Choice:
    path: Path
    reason: str


@dataclass(frozen=True)
class Context:
    """What a path needs beyond the batch and Eq. 3's factors (the CUDA kernel computes those itself)."""

    plan: control.ControlPlan | None
    scope_norm_sq: Tensor | None  # group/global scope on the CUDA kernel: ‖θ‖² of the scope
    tables: _one_pass.KeptTables | None  # the CUDA kernel's tables for this group
    kept_norms: KeptNorms  # ‖θ_i‖² as the last one-pass step left them


def choose(batch: Batch, *, fused: bool, tables: Callable[[], _one_pass.KeptTables]) -> Choice:
    """The path for this batch, and why. ``fused``: whether the group asks for (or allows) torch's
    fused kernels and its tensors suit them. Choosing the CUDA kernel builds or reuses its tables
    (``tables()`` gives the group's): whether the tensors suit it is known only then."""
    group = batch.group
    unfused = Path.FOREACH if group["foreach"] is not False else Path.REFERENCE
    if not fused:
        return Choice(unfused, "fused=False, foreach set, or tensors torch's fused kernels do not take")
    if group["lr"] == 0:
        return Choice(unfused, "lr is 0: Eq. 3 cannot be folded into a fused kernel's decay (1 − f)/γ")
    if not group["control"]:
        if group["decay"] != "l2":
            return Choice(unfused, f"{group['decay']} decay has no fused kernel")
        return Choice(Path.TORCH_FUSED, "an uncontrolled group: AdamW's decay in torch's fused kernel")
    if _one_pass.group_qualifies(group, batch.params[0]):
        if _one_pass.prepare(batch.params, batch.grads, batch.states, group, tables()):
            return Choice(Path.CUDA_ONE_PASS, "CUDA tensors, Triton installed, Eq. 3 before the step")
        cuda_refused = "the CUDA kernel declined the tensors (dtype, layout, or a zero ‖θ_0‖); "
    else:
        cuda_refused = ""
    if _one_pass_cpu.eligible(batch.params, batch.states, group):
        return Choice(Path.CPU_ONE_PASS, "float32/bfloat16 CPU tensors, the C++ kernel built, Eq. 3 before the step")
    why = "Eq. 3 after the step" if group["control_at"] != "pre_step" else "no one-pass kernel for these tensors here"
    return Choice(Path.TORCH_FUSED, f"{cuda_refused}{why}: Eq. 3 as a per-tensor decay in torch's fused AdamW")


Factors = list[Tensor] | float | None


def cuda_one_pass(batch: Batch, factors: Factors, context: Context) -> Tensor:
    plan, scope_norm_sq, tables = context.plan, context.scope_norm_sq, context.tables
    assert plan is not None and tables is not None
    target = plan.target if scope_norm_sq is None else control.target_norm(plan, batch.group)
    norm_sq = context.kept_norms.norm_sq_vector(batch.params)
    if scope_norm_sq is not None and plan.rate > 0:  # the kernel scales only the tensors it steps
        control.scale_idle_(batch, [rules.norm_control_factor(scope_norm_sq.sqrt(), target, plan.rate)])
    return _one_pass.launch(tables, batch.group, norm_sq, rate=plan.rate, target=target, scope_norm_sq=scope_norm_sq)


def cpu_one_pass(batch: Batch, factors: Factors, context: Context) -> Tensor:
    return _one_pass_cpu.adamwn_step_(
        batch.params, batch.grads, batch.states, batch.group, factor_vector(factors, len(batch.params))
    )


def torch_fused(batch: Batch, factors: Factors, context: Context) -> None:
    group = batch.group
    if group["control"]:
        decay = 0.0 if factors is None else control.as_weight_decay(factors, group["lr"])
    else:
        decay = group["weight_decay"]
    fused_adamw_(batch.params, batch.grads, batch.states, group, weight_decay=decay)


def _unfused(foreach: bool) -> Callable[[Batch, Factors, Context], None]:
    def step(batch: Batch, factors: Factors, context: Context) -> None:
        group = batch.group
        if factors is not None:
            control.scale_(batch.params, factors, foreach=foreach)
        if not group["control"]:
            rules.apply_decoupled_decay_(
                batch.params, group["decay"], group["lr"], group["weight_decay"], foreach=foreach
            )
        adam_update(batch.params, batch.grads, batch.states, group, foreach=foreach)

    return step


STEPS: dict[Path, Callable[[Batch, Factors, Context], Tensor | None]] = {
    Path.CUDA_ONE_PASS: cuda_one_pass,
    Path.CPU_ONE_PASS: cpu_one_pass,
    Path.TORCH_FUSED: torch_fused,
    Path.FOREACH: _unfused(foreach=True),
    Path.REFERENCE: _unfused(foreach=False),
}


def factor_vector(factors: Factors, count: int) -> Tensor:
    """Eq. 3's factors as the float64 vector the CPU kernel takes (None: no control this step)."""
    if factors is None:
        return torch.ones(count, dtype=torch.float64)
    if isinstance(factors, float):
        return torch.full((count,), factors, dtype=torch.float64)
    return torch.stack(factors).double()
