"""What every normctl optimizer shares: validation, param-group keys, the step protocol.

The optimizer classes stay thin: they declare their hyperparameters, validate them, and
implement ``_update(batches)``. This base class does the rest the way ``torch.optim`` does
it — closures, ``torch.no_grad()``, lazily created state — and adds the checks normctl
promises: unknown param-group keys fail loudly, sparse gradients are refused before anything
is modified, and ``skip_nonfinite=True`` leaves params and state untouched on a step whose
gradients hold NaN or Inf.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import distributed, rules

# Keys any normctl optimizer accepts in a param group besides its own hyperparameters:
# labels (``name``, torch's ``param_names``), what torch LR schedulers write (``initial_lr``,
# ``max_lr``/``min_lr`` for OneCycleLR), and the descriptive keys of ``normctl.param_groups``.
# A group may carry keys another normctl optimizer reads (``control`` for AdamWN,
# ``normalized`` for AdamC/SGDC) so that one ``param_groups(model)`` serves all of them.
SHARED_GROUP_KEYS = frozenset(
    {
        "params",
        "name",
        "param_names",
        "initial_lr",
        "min_lr",
        "control",
        "normalized",
        "weight_decay",
        "max_lr",
        "construction_lr",
        "skipped_steps",
        "base_momentum",  # OneCycleLR and CyclicLR with cycle_momentum
        "max_momentum",
        "lr_scale",  # timm's layer-wise lr decay: its schedulers multiply the group's lr by it
    }
)


def check_lr(value: Any) -> None:
    """γ: a finite number >= 0, or — torch's recipe for a compiled step under an LR scheduler,
    which then writes the new lr into the tensor instead of replacing it — a 1-element
    floating-point tensor holding one."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point() or value.requires_grad:
            raise ValueError(
                f"lr as a tensor must have 1 floating-point element and no grad, got shape "
                f"{tuple(value.shape)}, dtype {value.dtype}, requires_grad={value.requires_grad}"
            )
        value = value.item()
    check_nonnegative("lr", value)


def check_nonnegative(name: str, value: Any) -> None:
    _check_real(name, value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = True) -> None:
    _check_real(name, value)
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_betas(betas: Any) -> None:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2) in [0, 1), got {betas!r}")
    check_unit_interval("betas[0]", betas[0], closed_right=False)
    check_unit_interval("betas[1]", betas[1], closed_right=False)


def check_bools(group: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if not isinstance(group[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(group[name]).__name__}")


def check_max_lr(max_lr: Any) -> None:
    if max_lr is not None and not (is_real(max_lr) and 0 < max_lr < math.inf):
        raise ValueError(f"max_lr must be None or a finite number > 0, got {max_lr!r}")


def check_peak_lr_known(group: Mapping[str, Any], needed: bool, why: str) -> None:
    """A group whose rule divides by γ_max (``why`` says which rule) cannot take it from an lr of 0
    at construction (a hand-written warm-up from 0): it needs ``max_lr``."""
    if needed and group["lr"] == 0 and group.get("max_lr") is None and not group.get("initial_lr"):
        raise ValueError(
            f"lr is 0 at construction, so γ_max, which {why} divides by, cannot be read from it: "
            "pass max_lr= the peak lr of your schedule"
        )


def as_number(value: Any) -> Any:
    """A 1-element tensor (a tensor lr) as the Python number it holds; anything else as it is."""
    return value.item() if isinstance(value, Tensor) else value


# The group values a tensor lr puts in a group: the lr, and the copies LR schedulers make of it.
TENSOR_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def numbers_for_tensor_lrs(groups: list[dict]) -> list[tuple[dict, str, Tensor]]:
    """An eager step reads a tensor lr as the number it holds (as torch's optimizers do,
    ``.item()`` on the host being faster than tensor arithmetic there); :func:`put_back_tensor_lrs`
    puts the tensors back after the step, so that schedulers keep writing into them. Under
    ``torch.compile`` the step reads the tensors themselves: a changed lr is then new data, not a
    new graph. Returns what to put back."""
    if torch.compiler.is_compiling():
        return []
    held = [(g, k, g[k]) for g in groups for k in TENSOR_LR_KEYS if isinstance(g.get(k), Tensor)]
    for group, key, tensor in held:
        group[key] = tensor.item()
    return held


def put_back_tensor_lrs(held: list[tuple[dict, str, Tensor]]) -> None:
    for group, key, tensor in held:
        group[key] = tensor


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_real(name: str, value: Any) -> None:
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")


def peak_lr(group: dict) -> float:
    """γ_max of a group: explicit ``max_lr``, else the ``initial_lr`` a torch LR scheduler
    records when it is attached (its base lr, the peak of warm-up + decay schedules), else the
    lr the group had when it was added to the optimizer.

    All three live in the param group, so they round-trip through ``state_dict()``.
    OneCycleLR writes its peak into ``max_lr`` itself, so it is picked up too.
    """
    if group.get("max_lr") is not None:
        return group["max_lr"]
    if group.get("initial_lr") is not None:
        return group["initial_lr"]
    return group["construction_lr"]


@dataclass
class Batch:
    """The parameters of one group that have a gradient this step, with their state."""

    group: dict
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)


class NormctlOptimizer(Optimizer):
    """Base class: the ``torch.optim.Optimizer`` protocol plus normctl's input checks.

    Subclasses define ``_own_group_keys`` (internal keys they store in groups),
    ``_validate_group(group)``, ``_init_state(param, state, group)`` and ``_update(batches)``.
    """

    _own_group_keys: frozenset[str] = frozenset()
    # ``_init_state`` creates all of a tensor's state (no buffer waits for the first gradient)
    _eager_state: bool = True
    # the state a lazy optimizer creates at a tensor's first step (taken by ``continue_from``)
    _lazy_state_keys: frozenset[str] = frozenset()
    # how describe() reads a group: "controlled", "corrected" or "decayed" (of ._describe)
    _describe_role: str = "decayed"

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        for flag in ("foreach", "fused"):
            if defaults.get(flag) not in (None, True, False):
                raise TypeError(f"{flag} must be None, True or False, got {defaults[flag]!r}")
        if defaults.get("foreach") and defaults.get("fused"):
            raise ValueError("foreach and fused cannot both be True")
        check_bools(defaults, "skip_nonfinite")
        self._validate_group(dict(defaults))  # a bad default is refused even where every group overrides it
        self._init_caches()
        super().__init__(params, defaults)

    def _init_caches(self) -> None:
        """What the optimizer remembers between steps to go faster, none of it state: rebuilt
        empty when the optimizer is unpickled, copied or loads a state dict."""
        # per group: the tensors last found to suit torch's fused kernels (a walk over every
        # tensor is a large part of a GPU step's host time; the kernels check again themselves)
        self._fused_checked: dict[int, tuple[int, ...]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._init_caches()

    # -- param groups ------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        allowed = SHARED_GROUP_KEYS | set(self.defaults) | self._own_group_keys
        unknown = sorted(set(param_group) - allowed)
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown param-group key(s) {unknown}; accepted keys are "
                f"{sorted(allowed - {'params'})}"
            )
        trial = {**self.defaults, **param_group}
        trial.pop("params", None)
        check_bools(trial, "skip_nonfinite")
        self._validate_group(trial)
        params = param_group["params"]
        if isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of "
                "tensors in sets will change between runs. Please use a list instead."
            )
        # read once: a generator ({"params": module.parameters()}, torch's own idiom) is spent by
        # this read, and torch's add_param_group would then find the group empty
        tensors = [params] if isinstance(params, Tensor) else list(params)
        for p in tensors:
            if isinstance(p, Tensor) and p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters (got dtype {p.dtype})")
        super().add_param_group({**param_group, "params": tensors})
        group = self.param_groups[-1]
        group.setdefault("construction_lr", as_number(group["lr"]))  # a tensor lr changes in place
        group.setdefault("skipped_steps", 0)
        self._init_group(group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, after checking that ``state_dict`` is this optimizer's
        (:func:`._state_check.check_state_dict`): a refusal changes nothing."""
        from ._state_check import check_state_dict

        allowed = SHARED_GROUP_KEYS | set(self.defaults) | self._own_group_keys
        check_state_dict(self, state_dict, required=set(self.defaults), allowed=allowed)
        self._check_state_complete(state_dict)
        super().load_state_dict(state_dict)
        keep_saved_dtypes(self, state_dict, KEPT_DTYPE_KEYS)

    def _check_state_complete(self, state_dict: dict[str, Any]) -> None:
        """Each saved tensor's state holds every key this optimizer's step reads (an edited state
        dict — another optimizer's moments under this one's groups — would otherwise load and
        fail at the next step with a KeyError): one fresh state per group says which keys."""
        if not self._eager_state:
            return
        state = state_dict.get("state", {})
        for g, (saved, group) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            entries = [(index, param) for index, param in zip(saved["params"], group["params"]) if state.get(index)]
            if not entries:
                continue
            fresh: dict[str, Any] = {}
            self._init_state(entries[0][1], fresh, {**group, **{k: v for k, v in saved.items() if k != "params"}})
            for index, _ in entries:
                missing = sorted(set(fresh) - set(state[index]) - ADDED_STATE_KEYS)
                if missing:
                    raise ValueError(
                        f"{type(self).__name__}: state of tensor {index} (param group {g}) lacks {missing}: it was "
                        f"saved by another optimizer. To continue another optimizer's run, use "
                        f"{type(self).__name__}(...).continue_from(that_optimizer)"
                    )

    def describe(self) -> str:
        """A table of what each param group gets — controlled (and toward what), decayed,
        corrected, or the base step alone — its setting, and why it holds those tensors: the
        optimizer-side twin of ``param_groups(model, verbose=True)``, for the optimizer you built
        (``print(optimizer.describe())``)."""
        from . import _describe

        return _describe.table(type(self).__name__, self.param_groups, getattr(_describe, self._describe_role))

    def continue_from(self, source: Optimizer | dict[str, Any]) -> str:
        """Continue the run ``source`` (a torch optimizer, or its ``state_dict()``) trained over the
        same parameters in the same groups: the per-tensor state both optimizers keep — Adam's
        ``exp_avg``, ``exp_avg_sq`` and ``step``, SGD's ``momentum_buffer`` — is taken, and what
        this optimizer adds is initialised from the weights as they are now (a relative target's
        ‖θ_0‖ is each tensor's norm at the switch). The source's ``initial_lr`` (its scheduler's
        peak) becomes γ_max where this optimizer has none. Call it before the first step; the
        group settings stay this optimizer's. Returns what was kept and what was initialised::

            adamc = normctl.AdamC(normctl.param_groups(model), lr=lr)
            print(adamc.continue_from(adamw))
        """
        from . import _switch

        state_dict = _switch.source_state(source, self)
        peak = _switch.take_peak_lr(state_dict, self.param_groups)
        entries = _switch.saved_entries(state_dict, self.param_groups)
        kept: set[str] = set()
        initialised: set[str] = set()
        for param, saved, group in entries:
            state = self.state[param]
            if self._eager_state:
                self._init_state(param, state, group)
            takes = set(state) if self._eager_state else self._lazy_state_keys
            for key in takes & set(saved):
                like = state.get(key, param if isinstance(saved[key], Tensor) and saved[key].dim() else None)
                state[key] = _switch.as_like(saved[key], like)
            kept |= takes & set(saved)
            initialised |= set(state) - set(saved)
        name = type(source).__name__ if isinstance(source, Optimizer) else "the state dict"
        return _switch.summary(type(self).__name__, name, len(entries), kept, initialised, peak)

    def _validate_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_group(self, group: dict[str, Any]) -> None:
        """Set internal group keys (schedule position, recorded norms) at construction."""

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    # -- the step -----------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches = self._collect()
        # A step that makes state runs eagerly, outside any try block, so that torch.compile
        # resumes its graph after it; the steps after it have no host read and no graph break.
        if not self._has_state(batches) and self._first_step(batches):
            return loss
        # grad mode set and reset by hand, as torch's optimizers do: a compiled step cannot break
        # its graph inside a ``no_grad`` block
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            if not self._skips_nonfinite(batches):
                self._update_with_tensor_lrs(batches)
        finally:
            torch.set_grad_enabled(grad_enabled)
        return loss

    def _has_state(self, batches: list[Batch]) -> bool:
        return all(p in self.state for b in batches for p in b.params)

    @torch.compiler.disable
    @torch.no_grad()
    def _first_step(self, batches: list[Batch]) -> bool:
        """The start of a step on which some tensor has no state yet: DCP's state-initialisation
        step, a skipped non-finite step, or the checks of :meth:`_check_step` and the new state.
        Returns whether the step ends here."""
        if self._eager_state and not self.state and is_state_initialisation(batches):
            self._attach_state(batches)
            return True
        if self._skips_nonfinite(batches):
            return True
        self._check_step(batches)
        self._attach_state(batches)
        return False

    def _skips_nonfinite(self, batches: list[Batch]) -> bool:
        """Whether ``skip_nonfinite`` skips this step, counted where it does. One group asking to
        skip skips the whole step: groups must stay in step together."""
        if not any(g["skip_nonfinite"] for g in self.param_groups) or _all_finite(batches):
            return False
        for group in self.param_groups:
            group["skipped_steps"] += 1
        return True

    def _update_with_tensor_lrs(self, batches: list[Batch]) -> None:
        held = numbers_for_tensor_lrs(self.param_groups)
        try:
            self._update(batches)
        finally:
            put_back_tensor_lrs(held)

    def _check_step(self, batches: list[Batch]) -> None:
        """Refuse this step's settings before a first step makes any state (a schedule's value
        out of range); :meth:`_update` checks them again on every step."""

    def _collect(self) -> list[Batch]:
        return collect_batches(self.param_groups, type(self).__name__)

    def _attach_state(self, batches: list[Batch]) -> None:
        """Fill each batch's ``states``, creating the missing ones (called once everything
        else has been validated); :meth:`_check_new_params` may refuse them first."""
        found = [list(map(self.state.get, batch.params)) for batch in batches]
        if all(map(all, found)):  # every tensor has its state: the usual step
            for batch, states in zip(batches, found):
                batch.states = cast(list[dict], states)
            return
        meta = [tuple(p.shape) for b in batches for p in b.params if p.is_meta]
        if meta:
            raise ValueError(
                f"{type(self).__name__} cannot step meta-device parameters (shapes {meta[:3]}…), which hold no "
                "values: materialise them first (model.to_empty(device=...) and initialise the weights)"
            )
        self._check_new_params(batches)
        for batch in batches:
            for p in batch.params:
                state = self.state[p]
                if not state:
                    self._init_state(p, state, batch.group)
            batch.states = [self.state[p] for p in batch.params]

    def _check_new_params(self, batches: list[Batch]) -> None:
        """Refuse the tensors of ``batches`` that are about to get their first state (called
        only on steps where some tensor has none, before any is created)."""

    def _update(self, batches: list[Batch]) -> None:
        raise NotImplementedError

    @staticmethod
    def _use_foreach(group: dict) -> bool:
        return group["foreach"] is not False

    def _use_fused(self, group: dict, params: list[Tensor]) -> bool:
        """``fused=True``: always (error where torch has no kernel); ``None``: when neither path
        was asked for and torch's fused kernels support the tensors; ``False``: never."""
        fused = group.get("fused")
        if fused is False or (fused is None and group["foreach"] is not None) or not params:
            return False
        if fused is None and torch.compiler.is_compiling():
            return False  # inductor fuses the foreach path itself and cannot trace these kernels
        tensors = tuple(map(id, params))
        if self._fused_checked.get(id(group)) == tensors:
            return True
        refusal = self._fused_refusal(params)
        if refusal is None:
            self._fused_checked[id(group)] = tensors
            return True
        if fused:
            raise RuntimeError(refusal)
        return False

    def _fused_refusal(self, params: list[Tensor]) -> str | None:
        """Why torch's fused kernel cannot take these tensors (None: it can)."""
        from ._adam import fused_supported

        return None if fused_supported(params) else "fused=True needs floating-point CPU or CUDA parameters"


# State that torch's load_state_dict would cast to the parameter's dtype but that must keep its
# own: ‖θ_0‖ is measured in float32 for bfloat16 weights, and rounding it to bfloat16 on a
# resume would move every later target.
KEPT_DTYPE_KEYS = (
    "init_norm",
    "auto_target",
    "auto_update_sq",
    "auto_updates",
    "auto_alignment",
    "auto_norm_sq",
    "auto_last",
    "auto_growth",
)


# State added after runs were saved without it, whose absence the step handles: the alignment of
# target="auto" (a target measured without it takes a = 0).
ADDED_STATE_KEYS = frozenset({"auto_alignment"})


def keep_saved_dtypes(optimizer: Optimizer, state_dict: dict[str, Any], keys: Iterable[str]) -> None:
    """After torch's ``load_state_dict``: put back ``keys`` of each tensor's state as saved
    (on the parameter's device), undoing the cast to the parameter's dtype."""
    keys = tuple(keys)
    for saved, group in zip(state_dict["param_groups"], optimizer.param_groups):
        for index, param in zip(saved["params"], group["params"]):
            entry = state_dict["state"].get(index, {})
            for key in keys:
                if isinstance(entry.get(key), Tensor):
                    optimizer.state[param][key] = entry[key].to(param.device, copy=True)


def collect_batches(param_groups: list[dict], owner: str) -> list[Batch]:
    """Params with grads per group (grads negated where ``maximize``); refuses sparse grads
    before anything is touched."""
    batches = []
    for group in param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise TypeError(
                f"{owner} does not support sparse gradients; use torch.optim.SparseAdam for sparse embeddings"
            )
        if group.get("maximize"):
            grads = [-g for g in grads]
        batches.append(Batch(group, params, grads))
    return batches


@torch.compiler.disable  # reads gradients and lrs on the host; runs only before any state exists
def is_state_initialisation(batches: list[Batch]) -> bool:
    """A first step with every lr and every gradient 0 is how ``torch.distributed.checkpoint``
    creates optimizer state before loading into it (``get_optimizer_state_dict``). Such a step
    only creates the state: Eq. 3 acts even at lr 0, and must not move the weights or the
    schedule of a run that is about to be restored (or saved at step 0)."""
    if not any(b.grads for b in batches) or any(b.group["lr"] != 0 for b in batches):
        return False
    return _every_gradient(batches, lambda g: ~g.any())


def _all_finite(batches: list[Batch]) -> bool:
    return _every_gradient(batches, lambda g: torch.isfinite(g).all())


def _every_gradient(batches: list[Batch], holds: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``holds`` (a 0-d bool per tensor) is true of every gradient: one reduction per
    tensor and a single host sync for the step; with sharded gradients every rank checks its
    slices and all ranks take the same decision."""
    grads = [g for b in batches for g in b.grads]
    if not grads:
        return True
    on_this_rank = torch.stack([holds(distributed.local(g)) for g in grads]).all()
    return distributed.all_agree(on_this_rank, grads)


def corrected_lr_ratio(group: dict) -> float:
    """γ_t/γ_max for a group with ``normalized=True``, 1 for the others (Defazio 2025, §5).

    Warns when γ_t exceeds γ_max: the "correction" would then amplify the decay, which is
    almost always a γ_max that does not match the schedule (pass ``max_lr`` explicitly).
    """
    if not group["normalized"]:
        return 1.0
    lr, max_lr = group["lr"], peak_lr(group)
    if is_real(lr) and is_real(max_lr) and lr > max_lr * (1 + 1e-6):  # tensors: a compiled step, no host read
        warnings.warn(
            f"lr {lr:g} exceeds max_lr {max_lr:g}, so the corrected decay is larger than "
            "uncorrected decay; pass max_lr= the peak of your schedule",
            stacklevel=4,
        )
    return rules.corrected_decay_scale(lr, max_lr)


def warn_if_nothing_normalized(optimizer: Optimizer) -> None:
    if not any(g["normalized"] for g in optimizer.param_groups):
        warnings.warn(
            f"{type(optimizer).__name__}: no param group has normalized=True, so no decay is "
            "corrected and it behaves as its uncorrected base optimizer. Build the groups with "
            "normctl.param_groups(model) or pass normalized=True.",
            stacklevel=3,
        )
