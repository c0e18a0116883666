"""``normctl.check``: what weight decay will do to a run, said before it starts.

Any torch optimizer (torch's, normctl's, the wrappers) is read as it was built — its groups'
``weight_decay``, ``control``, ``normalized``, ``lr`` — and, where given, the model (names, norm
layers, the output layer, as :func:`normctl.param_roles` decides them), the run's length and its
lr multiplier. Each finding says what, the evidence, and the fix as code::

    findings = normctl.check(optimizer, model, steps=10_000, lr_schedule=multiplier)
    print(findings)

The checks are the questions users of weight decay ask most: which tensors should be decayed,
is λ doing anything in a run this long, why will the gradient norm climb at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import distributed, rules, schedules
from .groups import param_roles
from .optim import SGDC, AdamC, CorrectedDecay, MuonAdamW, MuonC
from .optim._auto_target import as_auto_target

CORRECTING = (AdamC, SGDC, MuonC, CorrectedDecay)
SETTLED = 3  # time scales after which a norm is at its steady state (e^-3 of the way left)
TAIL = 0.1  # the last fraction of the run whose gradient-norm rise is predicted
RISE = 1.25  # a predicted rise above this is worth a warning
# Adam's update per element, |m̂/sqrt(v̂)|: its RMS is about 0.2 in large AdamW runs (Moonshot 2025
# match Muon's update to it); a prior, before any step measures it
ADAM_UPDATE_RMS = 0.2
REFERENCE_DECAY = 0.1  # the AdamW λ a held target is compared against (target="auto"'s, nanoGPT's)
HELD_BELOW = 1.5  # AdamW expected this many times above a held target: worth a warning


@dataclass(frozen=True)
class Finding:
    severity: str  # "warning": likely to cost; "info": worth knowing
    what: str
    evidence: str
    fix: str  # code, or "" where nothing is to be done


class Findings(list):
    """The findings, printable as a short table."""

    def __str__(self) -> str:
        if not self:
            return "normctl.check: nothing to report"
        lines = []
        for f in self:
            lines.append(f"[{f.severity}] {f.what}" + (f"\n    evidence: {f.evidence}" if f.evidence else ""))
            if f.fix:
                lines.append(f"    fix: {f.fix}")
        return "\n".join(lines)

    def scalars(self, prefix: str) -> dict[str, int]:
        """How many findings, and how many warnings, as numbers a tracker charts (``prefix``/…):
        the framework callbacks send them beside the text."""
        return {f"{prefix}/findings": len(self), f"{prefix}/warnings": sum(f.severity == "warning" for f in self)}


def check(
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
    *,
    steps: int | None = None,
    lr_schedule: Callable[[int], float] | None = None,
) -> Findings:
    """What decay will do to this run: findings about ``optimizer`` (any torch optimizer), read
    with ``model`` (names, norm layers, the output layer), the run's ``steps`` and its lr
    multiplier ``lr_schedule`` (γ_t = lr·η_t) where given. Reads only; changes nothing; reads no
    other rank's data (shapes and settings, and the values of unsharded tensors), so one rank may
    call it alone under torchrun."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be None or an integer >= 1, got {steps!r}")
    names = {p: n for n, p in model.named_parameters()} if model is not None else {}
    roles = {r.name: r for r in param_roles(model)} if model is not None else {}
    findings = Findings()
    findings += _shrunk_vectors(optimizer, names)
    if model is not None:
        findings += _unmarked_normalized(optimizer, roles)
        findings += _held_output_layer(optimizer, names, roles)
    findings += _time_scales(optimizer, steps)
    findings += _controlled_targets(optimizer, names, steps)
    if steps is not None:
        findings += _held_below_adamw(optimizer, names, steps, lr_schedule)
    if steps is not None and lr_schedule is not None:
        findings += _tail_rise(optimizer, names, roles, steps, lr_schedule)
    return findings


def _shrinks(group: dict) -> bool:
    """Whether the group's tensors are pulled toward 0 or a target: decay, or norm control."""
    return bool(group.get("control", False) and "target" in group) or group.get("weight_decay", 0) > 0


def _label(params, names) -> str:
    shown = [names.get(p, f"{tuple(p.shape)}") for p in params]
    return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def _shrunk_vectors(optimizer, names) -> list[Finding]:
    """Norm gains, biases and norm shifts decayed or controlled: mature trainers leave them alone
    (on a default-initialised transformer, decaying them cost AdamW 0.011–0.013 nats)."""
    vectors = [p for g in optimizer.param_groups if _shrinks(g) for p in g["params"] if p.dim() < 2]
    if not vectors:
        return []
    return [
        Finding(
            "warning",
            f"{len(vectors)} tensor(s) with fewer than 2 dimensions (norm gains, biases) are decayed or controlled",
            _label(vectors, names),
            "build the optimizer over normctl.param_groups(model), which leaves them alone",
        )
    ]


def _unmarked_normalized(optimizer, roles) -> list[Finding]:
    if not isinstance(optimizer, CORRECTING) or any(g.get("normalized") for g in optimizer.param_groups):
        return []
    normalized = [name for name, role in roles.items() if role.group == "normalized"]
    if not normalized:
        return []
    return [
        Finding(
            "warning",
            f"the model has {len(normalized)} normalised weight(s) but no param group is marked normalized: "
            f"{type(optimizer).__name__} corrects nothing",
            ", ".join(normalized[:4]) + (" …" if len(normalized) > 4 else ""),
            f"{type(optimizer).__name__}(normctl.param_groups(model), …)",
        )
    ]


def _held_output_layer(optimizer, names, roles) -> list[Finding]:
    """A norm-controlled output layer: its norm sets the logit scale, and a norm held near (or
    pulled below) its initial value caps it — the held-out loss suffers while accuracy does not."""
    held = [
        p
        for g in optimizer.param_groups
        if g.get("control", False) and "target" in g
        for p in g["params"]
        if names.get(p) in roles and roles[names[p]].kind == "output"
    ]
    if not held:
        return []
    return [
        Finding(
            "warning",
            "the output layer is norm-controlled: its norm sets the logits' scale",
            _label(held, names) + " (a BatchNorm classifier's held head kept accuracy but lost held-out loss)",
            "normctl.param_groups(model, control_output=False) (AdamW's decay there), or your own group: "
            "{'params': head.parameters(), 'control': False, 'weight_decay': λ}",
        )
    ]


def _controlled_targets(optimizer, names, steps) -> list[Finding]:
    """AdamWN / NormControl targets that cannot do what they say: a relative target on tensors
    that start at norm 0 (r·0 = 0: left uncontrolled), and ``target="auto"`` on a run no longer
    than its measuring window (the run ends as AdamW, before any target is set)."""
    out = []
    unset: dict[str, tuple] = {}  # groups whose automatic target the run ends before setting
    for i, group in enumerate(optimizer.param_groups):
        if not (group.get("control", False) and "target" in group):
            continue
        label = group.get("name", f"group {i}")
        auto = as_auto_target(group["target"])
        if auto is not None:
            window = auto.steps if auto.rule == "equilibrium" else 3 * auto.interval
            if steps is not None and steps <= window:
                unset[label] = (auto, window)
            continue
        # unsharded tensors only: a check runs on one rank and must not wait for the others
        zero = [
            p
            for p in group["params"]
            if p.requires_grad and p.numel() and not distributed.is_sharded(p) and not p.detach().abs().max() > 0
        ]
        if zero and group.get("relative_target", True) and group.get("scope", "tensor") == "tensor":
            out.append(
                Finding(
                    "info",
                    f"{label}: {len(zero)} tensor(s) start at norm 0, where a relative target r·‖θ_0‖ is 0: they are "
                    "left uncontrolled (Adam's step only)",
                    _label(zero, names),
                    "put them in an uncontrolled group (normctl.param_groups does), or give relative_target=False "
                    "with the norm you want",
                )
            )
    if unset:
        auto, window = next(iter(unset.values()))
        out.append(
            Finding(
                "warning",
                f"{', '.join(unset)}: target='auto' measures for {window} steps and the run has {steps}: it trains "
                "as AdamW to the end and never sets a target",
                f"AutoTarget(rule={auto.rule!r}, steps={auto.steps}, interval={auto.interval})",
                f"normctl.AutoTarget(steps={max(1, steps // 20)}) (a few % of the run), or a fixed target",
            )
        )
    return out


def _held_below_adamw(optimizer, names, steps, lr_schedule) -> list[Finding]:
    """Fixed AdamWN / NormControl targets on tensors AdamW would grow well past them in this run:
    on the first-call issue's models, holding the initial norm cost held-out loss wherever AdamW
    moved the weights away from it. AdamW's end norm is predicted from the run's lrs with
    λ = 0.1 and a prior update size ``ADAM_UPDATE_RMS``·sqrt(n) (before any step measures it);
    ``target="auto"`` measures it instead."""
    out = []
    for i, group in enumerate(optimizer.param_groups):
        if not (group.get("control", False) and "target" in group) or as_auto_target(group["target"]) is not None:
            continue
        if not group.get("relative_target", True) or group.get("scope", "tensor") != "tensor":
            continue
        target = float(schedules.as_schedule(group["target"], "target")(steps))
        lr = group.get("initial_lr") or group["lr"]
        lrs = (float(lr) * (float(lr_schedule(t)) if lr_schedule is not None else 1.0) for t in range(steps))
        shrink, added = rules.decay_coefficients((g, REFERENCE_DECAY) for g in lrs)
        grown = []  # (tensor, AdamW's expected end norm over its initial norm)
        for p in group["params"]:
            if not p.requires_grad or distributed.is_sharded(p) or p.numel() == 0:
                continue  # a check reads no other rank's data
            norm_sq = float(p.detach().float().square().sum())
            if norm_sq > 0:
                ratio = math.sqrt(shrink + added * ADAM_UPDATE_RMS**2 * p.numel() / norm_sq)
                if ratio > HELD_BELOW * target:
                    grown.append((p, ratio))
        if grown:
            label = group.get("name", f"group {i}")
            median = sorted(r for _, r in grown)[len(grown) // 2]
            out.append(
                Finding(
                    "warning",
                    f"{label}: the target holds {len(grown)} tensor(s) at {target:.3g}× their initial norm, where "
                    f"AdamW would grow them to about {median:.3g}× (median) by step {steps}",
                    _label([p for p, _ in grown], names)
                    + f" (AdamW at λ {REFERENCE_DECAY} with an update RMS of {ADAM_UPDATE_RMS}, Adam's usual: a prior;"
                    " holding the initial norm cost held-out loss where AdamW grew the weights)",
                    # AutoTarget forecasts AdamW's end norm with the update orthogonal to the weight: where
                    # aligned updates grow the norms several-fold it falls short of them (results/auto_target)
                    "target=normctl.schedules.target_from_adamw(ratio, ramp_steps) with the norm ratio an AdamW run "
                    f"reached (its NormMonitor's group/decay/norm_ratio), or normctl.AutoTarget(total_steps={steps}), "
                    "which forecasts it from this run's first steps and falls short where AdamW's norms grow "
                    "several-fold",
                )
            )
    return out


def _time_scale(group: dict) -> float | None:
    """1/(2λγ): the steps decoupled decay takes to bring a norm to its steady state (for SGD's
    coupled decay with momentum μ, (1 − μ)/(2λγ)); None where nothing decays."""
    weight_decay, lr = group.get("weight_decay", 0), group.get("max_lr") or group.get("initial_lr") or group["lr"]
    if not (weight_decay > 0 and lr > 0) or (group.get("control", False) and "target" in group):
        return None
    momentum = group.get("momentum", 0) if "betas" not in group and not group.get("decoupled_weight_decay") else 0
    return (1 - momentum) / (2 * weight_decay * lr)


def _time_scales(optimizer, steps) -> list[Finding]:
    out = []
    for i, group in enumerate(optimizer.param_groups):
        scale = _time_scale(group)
        if scale is None:
            continue
        label = group.get("name", f"group {i}")
        if steps is None:
            out.append(Finding("info", f"{label}: decay settles the norms over about {scale:.0f} steps", "", ""))
        elif steps < scale:
            out.append(
                Finding(
                    "info",
                    f"{label}: decay never reaches its steady state in this run: the norms keep drifting",
                    f"{steps} steps against a time scale 1/(2λγ) of {scale:.0f}",
                    "",
                )
            )
        elif steps < SETTLED * scale:
            out.append(
                Finding(
                    "info",
                    f"{label}: the norms approach decay's steady state only towards the run's end",
                    f"time scale 1/(2λγ) = {scale:.0f} steps of {steps}",
                    "",
                )
            )
        else:
            out.append(
                Finding(
                    "info",
                    f"{label}: the norms reach decay's steady state from about step {SETTLED * scale:.0f}",
                    f"time scale 1/(2λγ) = {scale:.0f} steps of {steps}",
                    "",
                )
            )
    return out


def _tail_rise(optimizer, names, roles, steps, lr_schedule) -> list[Finding]:
    """Defazio (2025): on normalised layers in steady state ‖g‖/‖θ‖ follows sqrt(2λ/γ_t), so a
    schedule that ends near 0 with a fixed λ makes it rise over the last part of the run."""
    if isinstance(optimizer, CORRECTING):
        return []
    mid, late = float(lr_schedule(steps // 2)), float(lr_schedule(int(steps * (1 - TAIL / 2))))
    out = []
    for i, group in enumerate(optimizer.param_groups):
        scale = _time_scale(group)
        normalized = group.get("normalized") or any(
            names.get(p) in roles and roles[names[p]].group == "normalized" for p in group["params"]
        )
        rise = steady_state_rise(mid, late, steps, scale)
        if not normalized or rise is None or scale is None or rise < RISE:
            continue
        steady = "" if steps >= SETTLED * scale else " (as the norms approach their steady state)"
        out.append(
            Finding(
                "warning",
                f"{group.get('name', f'group {i}')}: ‖g‖/‖θ‖ of the normalised layers is predicted to rise "
                f"up to {rise:.1f}× over the last {TAIL:.0%} of the run{steady}",
                f"sqrt(2λ/γ_t) at step {int(steps * (1 - TAIL / 2))} against mid-run (η {late:.3g} vs {mid:.3g}): "
                "the steady state's rise, a bound — as γ_t falls the norms lag behind it (1/(2λγ_t) grows), and "
                "the measured rise is smaller; NormMonitor.forecast() a few % into the run follows the norms instead",
                _correcting_fix(optimizer),
            )
        )
    return out


def steady_state_rise(mid_lr: float, late_lr: float, steps: int, time_scale: float | None) -> float | None:
    """The rise of a normalised layer's ‖g‖/‖θ‖ from mid-run to late in the run that Defazio's
    (2025) steady state sqrt(2λ/γ_t) predicts at a fixed λ: sqrt(γ_mid/γ_late). None where it
    predicts none: nothing decays, the lr is 0 at either point, or the run is shorter than the
    time scale 1/(2λγ) and never reaches the steady state that rises."""
    if time_scale is None or steps < time_scale or not (mid_lr > 0 and late_lr > 0):
        return None
    return math.sqrt(mid_lr / late_lr)


def _correcting_fix(optimizer: torch.optim.Optimizer) -> str:
    """The corrected twin of ``optimizer`` that removes the end-of-run rise."""
    inner = getattr(optimizer, "optimizer", optimizer)  # a wrapper's base optimizer
    if isinstance(inner, MuonAdamW):
        return "MuonC with the same hyperparameters (over normctl.param_groups(model, muon=True)) removes it"
    return "AdamC / SGDC with the same hyperparameters (over normctl.param_groups(model)) remove it"
