"""``target="auto"``: the target norm measured by the run itself, with no prior AdamW run.

Two rules (derivations in ``docs/math.md``), each a frozen :class:`AutoTarget`:

* ``"equilibrium"`` — the norm AdamW would reach. For the first ``steps`` steps the optimizer
  *is* AdamW with decay λ_ref (Eq. 3 with target 0 at rate γ_t·λ_ref), and it measures the
  update per unit of lr, u_t = (f_t·θ_{t−1} − θ_t)/γ_t. With the run's length known
  (``total_steps``) it then targets AdamW's norm at the run's end, iterating AdamW's step on
  ‖θ‖² over the remaining learning rates::

      ‖θ_{t+1}‖² = (1 − γ_t·λ_ref)²·‖θ_t‖² + γ_t²·‖u‖²

  Without the length it holds each norm where AdamW had it at the window's end and says so once
  (``without_length="hold"``, the default); ``"asymptotic"`` targets AdamW's asymptotic norm,
  τ = sqrt(γ_max·‖u‖² / (λ_ref·(2 − γ_max·λ_ref))), which a run shorter than about 1/(2γλ_ref)
  steps never reaches (said once, counting the norms it would halve) — the rule before the
  length was known, which pinned a default-initialised GPT's tied embedding and lost 0.8 nats.
  It follows the weights wherever AdamW would take them: up for small initialisations, down for
  N(0, 1) embeddings.
* ``"inflection"`` — the rule of CPR (Franke et al. 2023): train without decay, keep an EMA of
  ‖θ‖², and every ``interval`` steps compare its growth over the last interval with the one
  before; at the first slow-down (after three intervals), hold the norm reached.

Either way the target is one number per tensor (``scope="tensor"``) or per scope, stored in the
optimizer state (``state["auto_target"]``, ``group["auto_target"]``; NaN / None while measuring),
checkpointed with it, and from then on Eq. 3 pulls the norm to it at rate k.

The functions read and write only the groups and the per-tensor state they are given, so
AdamWN and NormControl share them (as they share :mod:`._control`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import rules
from ..schedules import Schedule
from ._base import Batch, peak_lr

RULES = ("equilibrium", "inflection")


@dataclass(frozen=True)
class AutoTarget:
    """How ``target="auto"`` measures its target. ``AdamWN(..., target="auto")`` is
    ``AutoTarget()``; pass an instance to change a knob.

    Args:
        rule: ``"equilibrium"`` (AdamW's steady-state norm) or ``"inflection"`` (CPR's rule).
        weight_decay: λ_ref, the AdamW decay whose equilibrium is targeted, and which runs while
            the equilibrium rule measures (the λ you would give AdamW).
        steps: the equilibrium rule's measuring window, in steps.
        interval: the inflection rule's steps between two growth measurements.
        ema: the inflection rule's per-step decay of its ‖θ‖² average (CPR's 0.9).
        multiple: the target is this multiple of the measured norm.
        total_steps: the run's length in optimizer steps: the equilibrium rule then targets the
            norm AdamW reaches by the run's end rather than its asymptotic one (the Hugging Face
            and Lightning callbacks fill it in from the trainer's max steps).
        lr_schedule: the lr multiplier η_t of the run (γ_t = γ_max·η_t), a normctl schedule such
            as the ``schedules.cosine(1, 0, total_steps, warmup=…)`` given to ``LambdaLR``; None
            holds the lr of the window's end to the run's end (more decay than a decaying
            schedule gives, so a target nearer the asymptote).
        without_length: what the equilibrium rule targets when ``total_steps`` is None:
            ``"hold"`` the norm AdamW had at the window's end, ``"asymptotic"`` AdamW's asymptotic
            norm (runs made before the length was known).
        alignment: ``True``: the equilibrium rule also measures the update's alignment with
            the weight the earlier updates built, a = ⟨θ_{t−1}, −u_t⟩/(γ_t·‖u‖²) (ratio of the
            window's sums), and iterates the step with it (``rules.aligned_norm_sq_after``):
            momentum correlates successive updates, and the norm settles sqrt(1 + 2a)× above
            the a = 0 form. Right where the updates' correlation stays what it was in the
            window (Muon on noise gradients: 0.94× the settled norm, against 0.20× with a = 0);
            too high where early updates are more alike than later ones (a GPT's hidden
            matrices: 1.5–2.5× AdamW's end norms, and 0.12 nats worse than AdamW); on a GPT from a
            small initialisation, whose norms AdamW grows several-fold, it reaches AdamW's norm
            where a = 0 falls far short, and is no better than AdamW for it. ``False`` (the
            default): a = 0 (docs/math.md).
        shared_ratio: ``True``: under ``scope="tensor"``, one ratio for every tensor of a group —
            the group's target norm (the rule measured over the group's tensors together) over
            its initial norm, each tensor held at that ratio of its own initial norm, the shape
            of Loshchilov's (2023) recipe, where one measured ratio sets every tensor's target.
            It presumes AdamW moves the group's tensors alike: on a GPT from a small
            initialisation (embeddings in a group of their own) it beat the per-tensor targets;
            over plain parameters from PyTorch's initialisation it was worse than AdamW on every
            model tried. ``False`` (the default): each tensor's own target. A group or global
            scope has one target already.
    """

    rule: str = "equilibrium"
    weight_decay: float = 0.1
    steps: int = 200
    interval: int = 100
    ema: float = 0.9
    multiple: float = 1.0
    total_steps: int | None = None
    lr_schedule: Schedule | None = None
    without_length: str = "hold"
    alignment: bool = False
    shared_ratio: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"AutoTarget rule must be one of {RULES}, got {self.rule!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 < self.weight_decay < math.inf):
            raise ValueError(f"AutoTarget weight_decay must be a finite number > 0, got {self.weight_decay!r}")
        for name in ("steps", "interval"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"AutoTarget {name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"AutoTarget ema must be in [0, 1), got {self.ema!r}")
        if not 0 < self.multiple < math.inf:
            raise ValueError(f"AutoTarget multiple must be a finite number > 0, got {self.multiple!r}")
        if self.total_steps is not None and not (isinstance(self.total_steps, int) and self.total_steps >= 1):
            raise ValueError(f"AutoTarget total_steps must be None or an integer >= 1, got {self.total_steps!r}")
        if self.without_length not in ("hold", "asymptotic"):
            raise ValueError(f"AutoTarget without_length must be 'hold' or 'asymptotic', got {self.without_length!r}")
        for name in ("alignment", "shared_ratio"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"AutoTarget {name} must be True or False, got {getattr(self, name)!r}")
        if self.lr_schedule is not None and not callable(self.lr_schedule):
            raise TypeError(f"AutoTarget lr_schedule must be None or a schedule, got {type(self.lr_schedule).__name__}")


def as_auto_target(target: Any) -> AutoTarget | None:
    """The :class:`AutoTarget` a ``target`` argument asks for (``"auto"`` or an instance), else None."""
    if isinstance(target, AutoTarget):
        return target
    if isinstance(target, str):
        if target != "auto":
            raise ValueError(f"target must be a number >= 0, a schedule, 'auto' or an AutoTarget, got {target!r}")
        return AutoTarget()
    return None


def measuring_factor(auto: AutoTarget, group: dict) -> float:
    """What Eq. 3 is replaced by while the target is measured: AdamW's decay (equilibrium) or
    nothing (inflection, as CPR before its bound is set)."""
    return 1.0 - group["lr"] * auto.weight_decay if auto.rule == "equilibrium" else 1.0


def init_tensor_state(param: Tensor, state: dict, group: dict) -> None:
    if group["control"] and "auto_target" not in state and as_auto_target(group["target"]) is not None:
        dtype, device = rules.norm_dtype(param), param.device

        def scalar(value: float) -> Tensor:
            return torch.full((), value, dtype=dtype, device=device)

        state.update(
            auto_target=scalar(math.nan),  # τ of this tensor (tensor scope), NaN until set
            auto_update_sq=scalar(0.0),  # equilibrium: Σ ‖u_t‖² over the window
            auto_updates=scalar(0.0),  # … over this many steps
            auto_alignment=scalar(0.0),  # equilibrium: Σ ⟨θ_{t−1}, −u_t⟩/γ_t over the window
            auto_norm_sq=scalar(0.0),  # inflection: EMA of ‖θ‖²
            auto_last=scalar(0.0),  # … its value at the last interval
            auto_growth=scalar(math.nan),  # … its growth over the last interval
        )


def snapshot(batches: list[Batch]) -> list[list[Tensor] | None]:
    """θ before the step, for the equilibrium rule's u = (f·θ_{t−1} − θ_t)/γ (None elsewhere)."""
    out: list[list[Tensor] | None] = []
    for batch in batches:
        auto = _auto(batch.group)
        wanted = auto is not None and auto.rule == "equilibrium" and batch.group["schedule_step"] < auto.steps
        out.append([p.detach().clone() for p in batch.params] if wanted else None)
    return out


def observe(batches: list[Batch], before: list[list[Tensor] | None], groups: list[dict]) -> None:
    """After the step, before the schedule advances: accumulate what each rule measures and set
    the targets whose measurement is complete."""
    for batch, previous in zip(batches, before):
        auto, lr = _auto(batch.group), batch.group["lr"]
        if auto is None or not batch.params:
            continue
        if previous is not None and lr > 0:
            factor = measuring_factor(auto, batch.group)
            updates = [(factor * old - new.detach()) / lr for old, new in zip(previous, batch.params)]
            # ⟨θ_{t−1}, u_t⟩ is one more pass over the weights: taken only where the rule uses it
            inners = rules.inner_products(previous, updates) if auto.alignment else [None] * len(updates)
            for state, norm, inner in zip(batch.states, rules.tensor_norms(updates), inners):
                device = state["auto_update_sq"].device
                state["auto_update_sq"] += norm.float().square().to(device)
                state["auto_updates"] += 1
                if inner is not None and "auto_alignment" in state:  # state saved before a was measured has none
                    state["auto_alignment"] -= inner.float().to(device) / lr
        if auto.rule == "inflection":
            _follow_norms(batch, auto)
    halved, unknown_length = 0, None  # what the warning without the run's length says
    for params, states, auto, group, store in _undecided_units(batches, groups):
        step = group["schedule_step"] + 1  # the step just taken
        if auto.rule == "equilibrium":
            if step >= auto.steps:
                update_sq = sum(float(s["auto_update_sq"]) / max(float(s["auto_updates"]), 1.0) for s in states)
                current = float(rules.combined_norm(rules.tensor_norms(params)))
                alignment = measured_alignment(states) if auto.alignment else 0.0
                tau = auto.multiple * equilibrium_target(auto, group, current, update_sq, step, alignment)
                store(tau)
                halved += tau < 0.5 * current
                if auto.total_steps is None:
                    unknown_length = unknown_length or (peak_lr(group), auto.weight_decay, auto.without_length)
        elif step % auto.interval == 0:
            _compare_growth(params, states, auto, store)
    _warn_without_length(halved, unknown_length)


def measured_alignment(states: list[dict]) -> float:
    """a = Σ⟨θ_{t−1}, −u_t⟩/γ_t ÷ Σ‖u_t‖² over the measuring window (sums over tensors give a
    scope's); 0 where nothing was measured. The inner product, not the cosine, is carried
    forward: momentum makes it γ·Σ_k⟨u_{t−k}, u_t⟩ whatever the norm, while the cosine of a
    window that starts from a small initialisation is far above the one of the settled norm."""
    update_sq = sum(float(s["auto_update_sq"]) for s in states)
    if not all("auto_alignment" in s for s in states) or update_sq <= 0:
        return 0.0
    return sum(float(s["auto_alignment"]) for s in states) / update_sq


def equilibrium_target(
    auto: AutoTarget, group: dict, norm: float, update_sq: float, step: int, alignment: float = 0.0
) -> float:
    """τ of the equilibrium rule for a tensor or scope at ``norm`` after ``step`` steps, its
    updates' mean ‖u‖² = ``update_sq`` and ``alignment`` a: AdamW's norm at the run's end when
    ``total_steps`` is known (:func:`rules.aligned_norm_sq_after` over the remaining learning
    rates), else ``norm`` itself (``without_length="hold"``) or AdamW's asymptotic norm at the
    peak lr."""
    if auto.total_steps is None:
        if auto.without_length == "hold":
            return norm
        return rules.aligned_steady_norm(update_sq, peak_lr(group), auto.weight_decay, alignment)
    remaining = range(step, auto.total_steps)
    if auto.lr_schedule is None:
        lrs: Any = (group["lr"] for _ in remaining)
    else:
        lrs = (peak_lr(group) * float(auto.lr_schedule(t)) for t in remaining)
    steps = ((lr, auto.weight_decay) for lr in lrs)
    return math.sqrt(rules.aligned_norm_sq_after(norm * norm, update_sq, steps, alignment))


def _warn_without_length(halved: int, unknown: tuple[float, float, str] | None) -> None:
    """Say once that an automatic target was set without the run's length: held where AdamW had
    the norm, or from AdamW's asymptotic norm — then with how many it would pull below half their
    norm now (AdamW's decay alone needs ln 2/(γλ) steps to halve a norm, so in a shorter run such
    a target is far below anything AdamW would reach)."""
    if unknown is None:
        return
    lr, weight_decay, without_length = unknown
    if without_length == "hold":
        warnings.warn(
            "target='auto' does not know the run's length, so it holds each norm where AdamW had it at the end of "
            "its measuring window. Pass AutoTarget(total_steps=<your run's steps>) to target the norm AdamW reaches "
            "within your run (the Hugging Face and Lightning callbacks pass it for you).",
            stacklevel=4,
        )
        return
    settle = 1 / (2 * lr * weight_decay)
    halve = math.log(2) / (lr * weight_decay)
    below = (
        f"; it pulls {halved} tensor(s)/scope(s) below half their norm now, which AdamW's decay alone takes "
        f"{halve:.0f} steps to do"
        if halved
        else ""
    )
    warnings.warn(
        f"target='auto' set its targets to AdamW's asymptotic norm, which it approaches over about "
        f"1/(2γλ) = {settle:.0f} steps{below}. Pass AutoTarget(total_steps=<your run's steps>) to target the "
        "norm AdamW reaches within your run.",
        stacklevel=4,
    )


def _follow_norms(batch: Batch, auto: AutoTarget) -> None:
    """The inflection rule's EMA of ‖θ‖² (per tensor: sums of them give a scope's)."""
    for state, norm in zip(batch.states, rules.tensor_norms(batch.params)):
        norm_sq = norm.float().square().to(state["auto_norm_sq"].device)
        if batch.group["schedule_step"] == 0:
            state["auto_norm_sq"].copy_(norm_sq)
        else:
            state["auto_norm_sq"].mul_(auto.ema).add_(norm_sq, alpha=1 - auto.ema)


def _compare_growth(params: list[Tensor], states: list[dict], auto: AutoTarget, store) -> None:
    """Every ``interval`` steps: the growth of the ‖θ‖² average since the last interval; the
    first interval that grows less than the one before is the inflection: hold ‖θ‖ there."""
    ema = sum(float(s["auto_norm_sq"]) for s in states)
    last = sum(float(s["auto_last"]) for s in states)
    previous = sum(float(s["auto_growth"]) for s in states)  # NaN until two intervals have passed
    if last > 0:
        growth = ema - last
        if previous > growth:
            store(auto.multiple * float(rules.combined_norm(rules.tensor_norms(params))))
        for s in states:
            s["auto_growth"].fill_(float(s["auto_norm_sq"]) - float(s["auto_last"]))
    for s in states:
        s["auto_last"].copy_(s["auto_norm_sq"])


def _undecided_units(batches: list[Batch], groups: list[dict]) -> list[tuple]:
    """What each target is measured over and still waits for: a tensor (tensor scope), a
    shared-ratio group, a group, or every global-scope group together — as (params, states, rule,
    group, store). A shared-ratio group's tensors that missed its decision take its ratio here,
    with nothing to measure."""
    units: list[tuple] = []
    global_params: list[Tensor] = []
    global_states: list[dict] = []
    for batch in batches:
        group, auto = batch.group, _auto(batch.group)
        if auto is None or not batch.params:
            continue
        if group["scope"] == "tensor" and auto.shared_ratio:
            unset = [s for s in batch.states if bool(s["auto_target"].isnan())]
            if unset and (len(unset) == len(batch.states) or not _take_the_groups_ratio(batch.states, unset)):
                units.append((batch.params, batch.states, auto, group, _ratio_storer(batch.states)))
        elif group["scope"] == "tensor":
            for p, s in zip(batch.params, batch.states):
                if bool(s["auto_target"].isnan()):
                    units.append(([p], [s], auto, group, lambda tau, s=s: s["auto_target"].fill_(tau)))
        elif group.get("auto_target") is None:
            if group["scope"] == "group":
                units.append((batch.params, batch.states, auto, group, _storer([group])))
            else:
                global_params += batch.params
                global_states += batch.states
    scope = [g for g in groups if g["control"] and g["scope"] == "global" and _auto(g) is not None]
    if global_params:
        units.append((global_params, global_states, _auto(scope[0]), scope[0], _storer(scope)))
    return units


def _storer(scope: list[dict]):
    def store(tau: float) -> None:
        for group in scope:
            group["auto_target"] = float(tau)

    return store


def _take_the_groups_ratio(states: list[dict], unset: list[dict]) -> bool:
    """``shared_ratio``: tensors that had no gradient when their group's ratio was set take that
    ratio when they first have one, rather than a ratio measured over themselves alone. False
    where no set target gives a ratio (every one of zero initial norm): they are measured then."""
    decided = [s for s in states if not bool(s["auto_target"].isnan()) and float(s["init_norm"]) > 0]
    if not decided:
        return False
    ratio = float(decided[0]["auto_target"]) / float(decided[0]["init_norm"])
    for s in unset:
        s["auto_target"].fill_(ratio * float(s["init_norm"]))
    return True


def _ratio_storer(states: list[dict]):
    """Store a group's target τ as one ratio τ/‖θ_0‖ of the group's initial norm, each tensor's
    target that ratio of its own initial norm (a group that starts at zero norm: τ shared evenly)."""

    def store(tau: float) -> None:
        initial = math.sqrt(sum(float(s["init_norm"]) ** 2 for s in states))
        for s in states:
            if bool(s["auto_target"].isnan()):  # a target once set is never moved
                share = float(s["init_norm"]) / initial if initial > 0 else 1 / math.sqrt(len(states))
                s["auto_target"].fill_(tau * share)

    return store


def _auto(group: dict) -> AutoTarget | None:
    return as_auto_target(group["target"]) if group["control"] else None
