"""AdamWN: Adam with weight norm control (Loshchilov 2023, Algorithm 1, line 13.c)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import rules
from ..groups import split_plain
from ..schedules import Schedule
from . import _adamwn_paths as paths
from . import _auto_target as auto_target
from . import _control as control
from . import _one_pass
from ._adam import adam_state
from ._adamwn_paths import Path
from ._auto_target import AutoTarget
from ._base import Batch, NormctlOptimizer, check_betas, check_bools, check_choice, check_lr, check_nonnegative
from ._kept_norms import KeptNorms


class AdamWN(NormctlOptimizer):
    r"""Adam with weight norm control: the weight norm is pulled toward a target, not toward 0.

    Every controlled tensor (or group, or the whole model, see ``scope``) gets Adam's step and
    the norm control of Eq. 3::

        θ ← θ − k_t · (1 − τ_t/‖θ‖) · θ,      τ_t = r_t · ‖θ_0‖

    where ‖θ_0‖ is recorded at the first step. Above the target the weights shrink, below it
    they grow; AdamW's decoupled weight decay is the special case τ = 0.

    Paper: Loshchilov, *Weight Norm Control*, 2023 (arXiv:2311.11446).

    Where to apply it: matrices and embeddings (``normctl.param_groups`` marks them with
    ``control=True``). Norm gains and biases are better left alone (the paper's appendix: also
    controlling LayerNorm parameters was worse); such groups set ``"control": False`` and get
    plain Adam, or AdamW's decoupled decay of type ``decay`` if their ``weight_decay`` is > 0.

    Args:
        params: parameters or param groups. Group keys: any argument below, plus ``control``
            (bool, default True) and ``weight_decay`` (used only by groups with control off).
        lr: γ, the Adam learning rate (units of parameter value per step; LR schedulers drive it).
            A 1-element tensor also, for a compiled step under a scheduler (torch's recipe: the
            scheduler writes into it, so a new lr does not recompile the step).
        betas, eps: as in ``torch.optim.Adam``.
        target: r_t, the wanted ratio ‖θ_t‖/‖θ_0‖ (dimensionless, >= 0): a float or a schedule
            ``step -> float`` from :mod:`normctl.schedules`. With ``relative_target=False`` it is
            the norm τ_t itself, in the units of the parameters (needed for tensors initialised
            at zero, whose relative target would always be 0). ``"auto"`` (or an
            :class:`normctl.AutoTarget`) measures τ in the run itself, with no prior AdamW run:
            by default the norm AdamW with λ = 0.1 would settle at, measured over the first 200
            steps, during which the optimizer is that AdamW.
        rate: k_t, the fraction of the distance to the target closed per step, in [0, 1]; a float
            or a schedule. 1 snaps the norm onto the target; the paper uses 1e-2.
        rate_scaling: how k_t relates to the learning rate (the three forms of line 13):
            ``"none"`` (13.c, default) k_t = rate; ``"lr"`` (13.a, PyTorch AdamW) k_t = γ_t·rate;
            ``"lr_ratio"`` (13.b, original AdamW) k_t = (γ_t/γ_max)·rate. With ``target=0`` the
            last two are AdamW with ``weight_decay=rate`` in its PyTorch and original forms.
        scope: ``"tensor"`` — each tensor is pulled to r_t times its own initial norm;
            ``"group"`` — one norm over each param group's tensors; ``"global"`` — one norm over
            every controlled tensor of every group with this scope.
        relative_target: ``True`` (default) reads ``target`` as r_t, ``False`` as τ_t.
        control_at: ``"pre_step"`` (default) applies Eq. 3 to the weight before Adam's step, as
            torch's AdamW applies its decay, so the ``target=0`` case is bit-compatible with
            torch; ``"post_step"`` applies it after Adam's step, so ``rate=1`` is an exact
            retraction onto the target norm.
        weight_decay, decay: λ and the decay type (``"l2"``, ``"l1"``, ``"min"``) of AdamW's
            decoupled decay γ_t·D(θ) on groups with ``control=False``.
        max_lr: γ_max for ``rate_scaling="lr_ratio"``; see :func:`normctl.optim.peak_lr`.
        maximize: maximise the objective instead of minimising it.
        foreach, fused: which implementation runs. ``fused`` folds Eq. 3 (as a per-tensor
            decay λ_i = (1 − f_i)/γ), or the decay of uncontrolled groups, into torch's one-pass
            fused AdamW kernel; ``foreach=True`` selects the ``torch._foreach_*`` path and
            ``foreach=False`` the per-tensor reference loop. Default (both ``None``): fused where
            torch has the kernel (CPU and CUDA floating point; l2 decay), foreach otherwise. On
            float32 or bfloat16 groups with ``control_at="pre_step"``, fused means one kernel that applies
            Eq. 3 and Adam in one pass and keeps ‖θ‖ for the next step, for any scope: C++/OpenMP on
            the CPU (built once per environment, see :mod:`normctl.optim._one_pass_cpu`), Triton on CUDA
            (when Triton is installed). All paths are tested equal to the
            reference.
        skip_nonfinite: if any gradient holds NaN/Inf, skip the whole step leaving params and
            state untouched and count it in ``group["skipped_steps"]``. Off by default, where
            (as in torch) non-finite gradients flow into the moments and weights.

    State per tensor: ``step``, ``exp_avg``, ``exp_avg_sq`` (as torch's Adam) and ``init_norm``
    (‖θ_0‖, 0-d) for tensor scope; group and global scopes keep ``init_norm`` in the param
    group. The schedule position is the group's ``schedule_step``. All of it is checkpointed.

    Takes ``model.parameters()`` like any torch optimizer: under a relative target, a tensor (or
    a group/global scope) whose initial norm is 0 — zero-initialised biases, norm shifts — would
    be decayed to r·0 = 0 forever, so it is left uncontrolled (Adam's step, and AdamW's decay of
    the group's ``weight_decay`` if set), with one warning naming it. ``normctl.param_groups``
    puts such tensors in an uncontrolled group to begin with. ``target=0`` (AdamW) never needs
    ‖θ_0‖.
    """

    _describe_role = "controlled"

    _own_group_keys = control.CONTROL_GROUP_KEYS

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        target: float | Schedule | str | AutoTarget = 1.0,
        rate: float | Schedule = 1e-2,
        rate_scaling: str = "none",
        scope: str = "tensor",
        relative_target: bool = True,
        control_at: str = "pre_step",
        control: bool = True,
        weight_decay: float = 0.0,
        decay: str = "l2",
        max_lr: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            target=target,
            rate=rate,
            rate_scaling=rate_scaling,
            scope=scope,
            relative_target=relative_target,
            control_at=control_at,
            control=control,
            weight_decay=weight_decay,
            decay=decay,
            max_lr=max_lr,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
        )
        super().__init__(split_plain(params, "AdamWN", {"control": False, "weight_decay": 0.0}), defaults)

    def _init_caches(self) -> None:
        super()._init_caches()
        self._kept_tables: dict[int, _one_pass.KeptTables] = {}  # per group, for the one-pass CUDA kernel
        self._kept_norms = KeptNorms()  # per tensor, as either one-pass kernel left the weights

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict. Saving marks a point a run may resume from, and a resumed run has
        no kept norms (it measures ‖θ‖ at its next step), so the kept norms are dropped here too:
        the run that goes on and the run resumed from this state take bit-identical steps."""
        self._kept_norms.clear()
        self._kept_tables.clear()
        return super().state_dict()

    # -- construction -------------------------------------------------------------------------

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_nonnegative("eps", group["eps"])
        check_betas(group["betas"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_choice("decay", group["decay"], rules.DECAY_KINDS)
        check_bools(group, "maximize")
        control.validate_control_group(group)

    def _init_group(self, group: dict[str, Any]) -> None:
        control.init_control_group(group, self.param_groups, type(self).__name__)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        state.update(adam_state(param, fused=self._use_fused(group, [param])))
        control.init_tensor_state(param, state, group)

    def _check_new_params(self, batches: list[Batch]) -> None:
        control.warn_zero_initial_norms(batches, self.state, type(self).__name__)

    # -- the step -----------------------------------------------------------------------------

    def _check_step(self, batches: list[Batch]) -> None:
        for b in batches:
            control.plan(b.group)

    def _update(self, batches: list[Batch]) -> None:
        """Plan → state → path → Eq. 3's factors → the path's step → after the step → advance."""
        plans = [control.plan(b.group) for b in batches]  # validates schedule values first
        self._attach_state(batches)
        control.record_scope_norms(self.param_groups)
        before = auto_target.snapshot(batches)  # θ_{t−1}, where an automatic target measures u
        choices = [self._choose(b) for b in batches]
        in_kernel = [c.path is Path.CUDA_ONE_PASS for c in choices]  # the CUDA kernel computes its own factors
        scope_norms_sq = self._scope_norms_sq(batches, in_kernel)
        pre_step = control.control_factors(
            batches,
            [None if k else plan for plan, k in zip(plans, in_kernel)],
            self.param_groups,
            phase="pre_step",
            tensor_norms=self._kept_norms.tensor_norms,
        )
        for batch, choice, factors, plan, scope_norm_sq in zip(batches, choices, pre_step, plans, scope_norms_sq):
            if factors is not None:
                control.scale_idle_(batch, factors)
            context = paths.Context(plan, scope_norm_sq, self._kept_tables.get(id(batch.group)), self._kept_norms)
            kept_norm_sq = paths.STEPS[choice.path](batch, factors, context)
            if kept_norm_sq is not None:
                self._kept_norms.keep(batch.params, kept_norm_sq)
        control.apply_control(batches, plans, self.param_groups, phase="post_step")
        auto_target.observe(batches, before, self.param_groups)
        control.advance(self.param_groups)

    def _choose(self, batch: Batch) -> paths.Choice:
        fused = self._use_fused(batch.group, batch.params)
        return paths.choose(batch, fused=fused, tables=lambda: self._tables(batch.group))

    def step_paths(self) -> list[paths.Choice | None]:
        """Which kernel would take each param group's next step, and why (None: nothing to step).
        Read-only: the state a first step would create is made aside, the CUDA kernel's tables too."""
        from ._base import collect_batches

        out: list[paths.Choice | None] = []
        for batch in collect_batches(self.param_groups, "AdamWN"):
            for p in batch.params:
                state = self.state.get(p) or {}
                if not state:
                    self._init_state(p, state, batch.group)
                batch.states.append(state)
            fused = self._use_fused(batch.group, batch.params)
            out.append(paths.choose(batch, fused=fused, tables=_one_pass.KeptTables) if batch.params else None)
        return out

    def _tables(self, group: dict) -> _one_pass.KeptTables:
        return self._kept_tables.setdefault(id(group), _one_pass.KeptTables())

    def _scope_norms_sq(self, batches: list[Batch], on_cuda: list[bool]) -> list[Tensor | None]:
        """‖θ‖² of the scope of each group/global-scope batch taking the CUDA kernel (None for
        the others): summed from the kept per-tensor norms, measuring only those no longer
        valid (a tensor with no gradient was scaled in place). Read before any weight is written."""
        stepped = {id(b.group) for b, cuda in zip(batches, on_cuda) if cuda}

        def group_norm_sq(group: dict) -> Tensor:
            if id(group) in stepped:
                return self._kept_norms.norm_sq_vector(control.trainable(group["params"])).sum()
            return control.current_norm([group], foreach=True).square()

        global_norm_sq = None
        out: list[Tensor | None] = []
        for batch, cuda in zip(batches, on_cuda):
            scope = batch.group["scope"]
            if not cuda or scope == "tensor":
                out.append(None)
                continue
            device = batch.params[0].device
            if scope == "group":
                norm_sq = group_norm_sq(batch.group)
            else:
                if global_norm_sq is None:
                    groups = control.global_groups(self.param_groups)
                    global_norm_sq = torch.stack([group_norm_sq(g).to(device, torch.float32) for g in groups]).sum()
                norm_sq = global_norm_sq
            out.append(norm_sq.to(device, torch.float32))
        return out
