"""Norm control and corrected decay for any torch optimizer, as wrappers.

Loshchilov (2023): any optimizer with decoupled weight decay is the target-0 case of the same
optimizer with norm control. :class:`NormControl` adds Eq. 3 to SGD, Lion, Muon, Adafactor or
your own optimizer; :class:`CorrectedDecay` adds Defazio's γ_t/γ_max correction to any inner
optimizer whose decay is decoupled (θ ← θ − γ·λ·θ, as in AdamW, Lion, decoupled SGD).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim import Optimizer

from ..groups import split_plain
from ..schedules import Schedule
from . import _auto_target as auto_target
from . import _control as control
from . import _inner_one_pass as inner_one_pass
from ._adamwn_paths import factor_vector
from ._auto_target import AutoTarget
from ._base import (
    KEPT_DTYPE_KEYS,
    SHARED_GROUP_KEYS,
    Batch,
    check_bools,
    check_max_lr,
    check_peak_lr_known,
    collect_batches,
    corrected_lr_ratio,
    is_state_initialisation,
    keep_saved_dtypes,
)
from ._kept_norms import KeptNorms
from .sgdc import fused_sgd_defect

_OWN_KEY = "normctl_"  # marks the wrapper's own per-tensor state in the shared state dict


class _Wrapper(Optimizer):
    """A ``torch.optim.Optimizer`` that shares its param groups with an inner optimizer.

    The group dicts are the inner optimizer's own, so LR schedulers, ``zero_grad`` and
    ``add_param_group`` act on both; the wrapper's keys sit beside the inner ones. The state
    dict is one ordinary optimizer state dict — each tensor's entry holds the inner
    optimizer's state and the wrapper's own under ``normctl_``-prefixed keys — so
    ``torch.distributed.checkpoint`` saves and reshards it like any torch optimizer's.
    """

    _own_group_keys: frozenset[str] = frozenset()
    _describe_role = "decayed"  # how describe() reads a group (of ._describe)

    def __init__(self, optimizer: Optimizer, defaults: dict[str, Any]) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._adding_inner = True
        super().__init__(optimizer.param_groups, defaults)  # shares (and extends) the group dicts
        self._adding_inner = False
        self.param_groups = optimizer.param_groups
        # the inner optimizer's defaults beside the wrapper's: torch's schedulers read them from the
        # optimizer they are given (OneCycleLR and CyclicLR look for ``betas`` / ``momentum``)
        self.defaults = {**optimizer.defaults, **self.defaults}
        _warn_if_inner_fused_sgd_is_defective(optimizer)

    def __getstate__(self) -> dict[str, Any]:
        # torch pickles defaults, state and param_groups only; the inner optimizer is half of this
        # one (its groups are the same dicts, which a deepcopy or pickle keeps shared)
        return {**super().__getstate__(), "optimizer": self.optimizer, "_adding_inner": False}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_keys(param_group)
        self._validate_group({**self.defaults, **param_group})  # before either optimizer changes
        if not self._adding_inner:
            self.optimizer.add_param_group(param_group)
            param_group = self.optimizer.param_groups[-1]
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        if self._adding_inner:
            super().add_param_group(param_group)
        self._init_group(param_group)

    def _check_keys(self, param_group: dict[str, Any]) -> None:
        """A misspelt key (``contol=False``) would be kept by the inner optimizer and ignored by
        both: refuse keys that neither optimizer, a scheduler nor ``param_groups`` defines."""
        allowed = SHARED_GROUP_KEYS | set(self.optimizer.defaults) | set(self.defaults) | self._own_group_keys
        unknown = sorted(set(param_group) - allowed)
        if unknown:
            raise ValueError(
                f"{type(self).__name__}({type(self.optimizer).__name__}): unknown param-group key(s) {unknown}; "
                f"accepted keys are {sorted(allowed - {'params'})}"
            )

    def _validate_group(self, group: dict[str, Any]) -> None:
        pass

    def _init_group(self, group: dict[str, Any]) -> None:
        pass

    def step(self, closure=None):
        """One step of the inner optimizer with the wrapper's rule around it.

        A step with every lr 0 and every gradient exactly 0 only creates missing state and
        changes nothing else: it is how ``torch.distributed.checkpoint`` makes an optimizer's
        state before saving or loading it, and it repeats that step whenever the wrapper's own
        state is empty (always, for :class:`CorrectedDecay`), where a real inner step would
        decay Adam's moments and advance its step count at every checkpoint.
        """
        if self.param_groups is not self.optimizer.param_groups:
            raise RuntimeError(
                f"{type(self).__name__}: the inner {type(self.optimizer).__name__}'s param groups were replaced "
                "(its load_state_dict was called?), so a scheduler on the wrapper no longer moves the lr the inner "
                "optimizer steps with. Load the wrapper's own state through the wrapper's load_state_dict; to "
                f"continue another optimizer's run, build a fresh wrapper and call its continue_from(that_optimizer). "
                "Nothing was changed."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # the cheap test first; never under torch.compile, where it would read a tensor lr on the
        # host (DCP makes state eagerly)
        if not torch.compiler.is_compiling() and all(group["lr"] == 0 for group in self.param_groups):
            batches = collect_batches(self.param_groups, type(self).__name__)
            if is_state_initialisation(batches):
                if not self.optimizer.state:
                    self.optimizer.step()
                self._create_state(batches)
                return loss
        # grad mode set and reset by hand, as in NormctlOptimizer.step: a compiled step cannot
        # break its graph inside a ``no_grad`` block (the inner torch optimizer breaks it)
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            self._wrapped_step()
        finally:
            torch.set_grad_enabled(grad_enabled)
        return loss

    def _create_state(self, batches: list[Batch]) -> None:
        pass

    def _wrapped_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        inner, own = self.optimizer.state_dict(), super().state_dict()
        state = {index: dict(entry) for index, entry in inner["state"].items()}
        for index, entry in own["state"].items():
            state.setdefault(index, {}).update({_OWN_KEY + key: value for key, value in entry.items()})
        # the groups are shared, so both optimizers pack the same ones under the same indices
        return {**inner, "state": state, "param_groups": own["param_groups"]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from ._state_check import check_state_dict

        allowed = SHARED_GROUP_KEYS | set(self.optimizer.defaults) | set(self.defaults) | self._own_group_keys
        required = set(self.optimizer.defaults) | set(self.defaults)
        check_state_dict(self, state_dict, required=required, allowed=allowed)
        # the inner optimizer gets its own keys only (a normctl optimizer inside refuses foreign ones)
        ours_only = (set(self.defaults) | self._own_group_keys) - set(self.optimizer.defaults) - SHARED_GROUP_KEYS
        inner_groups = [{k: v for k, v in g.items() if k not in ours_only} for g in state_dict["param_groups"]]
        inner: dict[str, Any] = {**state_dict, "state": {}, "param_groups": inner_groups}
        own: dict[str, Any] = {"state": {}, "param_groups": state_dict["param_groups"]}
        for index, entry in state_dict["state"].items():
            for key, value in entry.items():
                if key.startswith(_OWN_KEY):
                    own["state"].setdefault(index, {})[key.removeprefix(_OWN_KEY)] = value
                else:
                    inner["state"].setdefault(index, {})[key] = value
        self.optimizer.load_state_dict(inner)
        super().load_state_dict(own)
        keep_saved_dtypes(self, own, KEPT_DTYPE_KEYS)
        self._share_groups_again()

    def _share_groups_again(self) -> None:
        """After the inner optimizer loaded a state dict (which gives it fresh group dicts): share
        them again, keeping the wrapper's keys."""
        for ours, theirs in zip(self.param_groups, self.optimizer.param_groups):
            theirs.update({k: v for k, v in ours.items() if k != "params"})
        self.param_groups = self.optimizer.param_groups

    def describe(self) -> str:
        """A table of what each param group gets from the wrapper (the inner optimizer's decay
        where the wrapper adds nothing), its setting, and why: see ``NormctlOptimizer.describe``."""
        from . import _describe

        title = f"{type(self).__name__}({type(self.optimizer).__name__})"
        return _describe.table(title, self.param_groups, getattr(_describe, self._describe_role))

    def continue_from(self, source: Optimizer | dict[str, Any]) -> str:
        """Continue the run ``source`` (a torch optimizer, or its ``state_dict()``) trained over the
        same parameters in the same groups: its per-tensor state goes to the inner optimizer as
        torch's ``load_state_dict`` takes it (``AdamW``'s into ``Adam``/``AdamW``, …), the group
        settings stay this optimizer's, and the wrapper's own state (‖θ_0‖) is measured at the
        next step from the weights as they are then. Call it before the first step. Returns what
        was kept::

            wrapped = normctl.NormControl(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0))
            print(wrapped.continue_from(adamw))
        """
        from . import _switch

        if self.optimizer.state:
            raise ValueError(f"{type(self).__name__}.continue_from needs a fresh optimizer: the inner one has state")
        state_dict = _switch.source_state(source, self)
        peak = _switch.take_peak_lr(state_dict, self.param_groups)
        inner = self.optimizer.state_dict()
        ours = [i for group in inner["param_groups"] for i in group["params"]]
        theirs = [i for group in state_dict["param_groups"] for i in group["params"]]
        saved = state_dict.get("state", {})
        carried = {o: saved[t] for o, t in zip(ours, theirs) if saved.get(t)}
        self.optimizer.load_state_dict({**inner, "state": carried})
        self._share_groups_again()
        kept = {key for entry in carried.values() for key in entry}
        name = type(source).__name__ if isinstance(source, Optimizer) else "the state dict"
        wrapper_state = {"‖θ_0‖ at the next step"} if isinstance(self, NormControl) else set()
        return _switch.summary(type(self).__name__, name, len(carried), kept, wrapper_state, peak)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"


class NormControl(_Wrapper):
    """Weight norm control (Eq. 3) around any torch optimizer.

    Each step: Eq. 3 on the pre-step weights (``control_at="pre_step"``, like AdamW's decay),
    then ``optimizer.step()`` (and Eq. 3 after it for ``"post_step"``)::

        θ ← θ − k_t·(1 − τ_t/‖θ‖)·θ;   θ ← inner_step(θ)

    The arguments are AdamWN's (see :class:`normctl.AdamWN`): ``target`` r_t, ``rate`` k_t,
    ``rate_scaling``, ``scope``, ``relative_target``, ``control_at``, ``max_lr``, and per-group
    ``control``. The inner optimizer's own weight decay is left as it is; a warning says when a
    controlled group also has ``weight_decay > 0`` (both would shrink the weights).

    ``NormControl(torch.optim.Adam(params, lr), target=r, rate=k)`` is AdamWN;
    ``NormControl(torch.optim.AdamW(params, lr, weight_decay=0), target=0, rate=λ,
    rate_scaling="lr")`` is ``torch.optim.AdamW(weight_decay=λ)``.
    """

    _describe_role = "controlled"

    _own_group_keys = control.CONTROL_GROUP_KEYS

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        target: float | Schedule | str | AutoTarget = 1.0,
        rate: float | Schedule = 1e-2,
        rate_scaling: str = "none",
        scope: str = "tensor",
        relative_target: bool = True,
        control_at: str = "pre_step",
        control: bool = True,
        max_lr: float | None = None,
    ) -> None:
        defaults = dict(
            target=target,
            rate=rate,
            rate_scaling=rate_scaling,
            scope=scope,
            relative_target=relative_target,
            control_at=control_at,
            control=control,
            max_lr=max_lr,
        )
        if isinstance(optimizer, Optimizer):
            _split_plain_group(optimizer)
        super().__init__(optimizer, defaults)
        self._kept_norms = KeptNorms()  # per tensor, as the one-pass kernel left the weights

    def _validate_group(self, group: dict[str, Any]) -> None:
        control.validate_control_group(group)

    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("construction_lr", group["lr"])
        control.init_control_group(group, self.param_groups, type(self).__name__)
        if group["control"] and group.get("weight_decay", 0) > 0:
            warnings.warn(
                f"a group controlled by NormControl also has the inner optimizer's "
                f"weight_decay={group['weight_decay']}: both shrink the weights. Set the inner "
                "weight_decay to 0 on controlled groups unless you mean both.",
                stacklevel=4,
            )

    def _create_state(self, batches: list[Batch]) -> None:
        control.warn_zero_initial_norms(batches, self.state, type(self).__name__)
        _attach(batches, self.state, control.init_tensor_state)
        control.record_scope_norms(self.param_groups)

    def _wrapped_step(self) -> None:
        batches = collect_batches(self.param_groups, "NormControl")
        plans = [control.plan(b.group) for b in batches]
        self._create_state(batches)
        before = auto_target.snapshot(batches)  # θ_{t−1}, where an automatic target measures u
        inner_kind = inner_one_pass.kind(self.optimizer)
        one_pass = inner_kind and inner_one_pass.plan(inner_kind, batches, self.optimizer.state)
        if inner_kind and one_pass:
            self._one_pass_step(inner_kind, one_pass, plans)
        else:
            control.apply_control(batches, plans, self.param_groups, phase="pre_step")
            self.optimizer.step()
            control.apply_control(batches, plans, self.param_groups, phase="post_step")
        auto_target.observe(batches, before, self.param_groups)
        control.advance(self.param_groups)

    def _one_pass_step(self, inner_kind: str, inner: list[inner_one_pass.InnerBatch], plans: list) -> None:
        """Around torch's Adam or SGD: Eq. 3 and the inner step in one pass, on the inner
        optimizer's state; the norms the kernel measures while writing θ serve the next step."""
        batches = [i.batch for i in inner]
        factors = control.control_factors(
            batches, plans, self.param_groups, phase="pre_step", tensor_norms=self._kept_norms.tensor_norms
        )
        for batch_inner, batch_factors in zip(inner, factors):
            batch = batch_inner.batch
            if not batch.params:
                continue
            if batch_factors is not None:
                control.scale_idle_(batch, batch_factors)
            norm_sq = inner_one_pass.step_(inner_kind, batch_inner, factor_vector(batch_factors, len(batch.params)))
            if norm_sq is not None and batch.group["control"]:  # an uncontrolled group's norms serve nothing
                self._kept_norms.keep(batch.params, norm_sq)

    def step_path(self) -> str:
        """How the next step runs, and why: Eq. 3 and the inner step in one pass, or Eq. 3 as a
        scale around the inner optimizer's own step. Read-only (the inner state is looked at in a copy)."""
        inner = type(self.optimizer).__name__
        kind = inner_one_pass.kind(self.optimizer)
        if kind is None:
            return f"generic — Eq. 3 as a scale, then {inner}.step() (one pass exists around torch's Adam, AdamW, SGD)"
        batches = collect_batches(self.param_groups, "NormControl")
        state_copy = {p: dict(self.optimizer.state.get(p, {})) for b in batches for p in b.params}
        if inner_one_pass.plan(kind, batches, state_copy):
            return f"one_pass — Eq. 3 and torch's {inner} step in one C++ pass on the inner state"
        return (
            f"generic — Eq. 3 as a scale, then {inner}.step(): not plain CPU float32/bfloat16 tensors, the "
            "kernel not built, or settings it does not take (weight decay, AMSGrad, maximize, no momentum, ...)"
        )

    def state_dict(self) -> dict[str, Any]:
        # as AdamWN's: a resumed run measures every norm afresh, so the run that goes on must too
        self._kept_norms.clear()
        return super().state_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._kept_norms = KeptNorms()


class CorrectedDecay(_Wrapper):
    """Defazio's corrected weight decay around any optimizer with decoupled decay.

    On groups with ``normalized=True`` the inner optimizer's ``weight_decay`` is scaled by
    γ_t/γ_max for the duration of each step (and restored afterwards, so checkpoints and
    schedulers see your value). ``CorrectedDecay(torch.optim.AdamW(groups))`` is AdamC;
    around Lion or decoupled SGD it is their corrected version. γ_max as in :class:`normctl.AdamC`.

    Only meaningful where the inner decay is decoupled and proportional to γ_t·λ: around
    ``torch.optim.SGD`` (whose decay is folded into the gradient) it corrects that L2 term.
    """

    _describe_role = "corrected"

    def __init__(self, optimizer: Optimizer, *, max_lr: float | None = None, normalized: bool = False) -> None:
        if "weight_decay" not in getattr(optimizer, "defaults", {}):
            raise ValueError(
                f"CorrectedDecay needs an inner optimizer with weight_decay; {type(optimizer).__name__} has none"
            )
        super().__init__(optimizer, dict(max_lr=max_lr, normalized=normalized))
        if not any(g["normalized"] for g in self.param_groups):
            warnings.warn(
                "CorrectedDecay: no param group has normalized=True, so nothing is "
                "corrected. Build the groups with normctl.param_groups(model).",
                stacklevel=2,
            )

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_max_lr(group["max_lr"])
        check_bools(group, "normalized")
        check_peak_lr_known(group, group["normalized"], "the corrected decay γ_t/γ_max·λ")

    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("construction_lr", group["lr"])

    def _wrapped_step(self) -> None:
        saved = [g["weight_decay"] for g in self.param_groups]
        try:
            for group in self.param_groups:
                group["weight_decay"] = group["weight_decay"] * corrected_lr_ratio(group)
            self.optimizer.step()
        finally:
            for group, weight_decay in zip(self.param_groups, saved):
                group["weight_decay"] = weight_decay


def _split_plain_group(optimizer: Optimizer) -> None:
    """An inner optimizer built over plain parameters — one group that neither normctl nor a
    scheduler has written in — gets the plain call's split (:func:`normctl.groups.split_plain`):
    its tensors with fewer than 2 dimensions in a group of their own, uncontrolled and not
    decayed. The group list is changed in place, so whatever holds it sees the split."""
    groups = optimizer.param_groups
    if len(groups) != 1 or {"control", "initial_lr", "param_names"} & set(groups[0]):
        return
    settings = {k: v for k, v in groups[0].items() if k != "params"}
    uncontrolled = {"control": False} | ({"weight_decay": 0.0} if "weight_decay" in settings else {})
    split = split_plain(groups[0]["params"], f"NormControl({type(optimizer).__name__})", uncontrolled)
    if len(split) > 1 or "control" in split[0]:
        groups[:] = [{**settings, **group} for group in split]


def _warn_if_inner_fused_sgd_is_defective(optimizer: Optimizer) -> None:
    """torch's own fused SGD before torch 2.14 skips most of a bfloat16/float16 CPU update
    (pytorch/pytorch#191763); wherever the wrapper leaves the step to it, the weights go wrong."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    params = [p for g in optimizer.param_groups if g.get("fused") for p in g["params"]]
    defect = params and fused_sgd_defect(params)
    if defect:
        warnings.warn(f"the wrapped torch SGD has fused=True: {defect}", stacklevel=3)


def _attach(batches: list[Batch], state, init) -> None:
    for batch in batches:
        batch.states = [state[p] for p in batch.params]
        if batch.group["control"]:  # an uncontrolled tensor has no state of the wrapper's to make
            for p, tensor_state in zip(batch.params, batch.states):
                init(p, tensor_state, batch.group)
