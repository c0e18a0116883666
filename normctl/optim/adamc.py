"""AdamC: Adam with corrected weight decay (Defazio 2025, Algorithm 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import rules
from ._adam import adam_state, adam_update, fused_adamw_
from ._base import (
    Batch,
    NormctlOptimizer,
    check_betas,
    check_bools,
    check_choice,
    check_lr,
    check_max_lr,
    check_nonnegative,
    check_peak_lr_known,
    corrected_lr_ratio,
    warn_if_nothing_normalized,
)


class AdamC(NormctlOptimizer):
    r"""AdamW whose weight decay follows the learning-rate schedule on normalised layers.

    On groups with ``normalized=True`` the decay coefficient is λ̂_t = λ·γ_t/γ_max, so the
    decoupled term applied to the pre-step weight is::

        θ ← θ − (γ_t²/γ_max)·λ·θ − γ_t·m̂/(√v̂ + ε)          (normalised layers)
        θ ← θ − γ_t·λ·θ          − γ_t·m̂/(√v̂ + ε)          (all other layers: AdamW)

    For a layer followed by a normalisation, AdamW's steady state ‖g‖/‖θ‖ = sqrt(2λ/γ_t) rises
    as γ_t decays, which is the gradient-norm blow-up at the end of training; with the
    correction it is sqrt(2λ/γ_max) throughout and weight norms stay stable.

    Paper: Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025.

    Where to apply it: ``normalized=True`` on weights whose output feeds a normalisation layer
    (in transformers: every linear layer except the output layer). ``normctl.param_groups``
    marks them and says why. Not on embeddings, the output layer, or norm gains.

    Args:
        lr: γ_t, driven by your LR scheduler as usual (a 1-element tensor for a compiled step, as
            for :class:`AdamWN`).
        weight_decay: λ, as in ``torch.optim.AdamW`` (decay per unit learning rate). At the
            peak lr the corrected decay equals AdamW's, so an AdamW λ carries over unchanged;
            below the peak it is weaker by γ_t/γ_max.
        max_lr: γ_max, the peak of the schedule (with warm-up: the peak, not the first value).
            If ``None``: the ``initial_lr`` a torch LR scheduler records (its base lr, the peak
            of ``LambdaLR``/``CosineAnnealingLR``/``SequentialLR`` warm-up schedules; OneCycleLR
            writes ``max_lr`` itself), else the lr at construction. Stored in the param group.
        normalized: default for groups without a ``normalized`` key.
        decay: ``"l2"`` (default), ``"l1"`` or ``"min"`` — the decay direction D(θ); the
            correction scales the whole term by γ_t/γ_max.
        betas, eps, maximize, foreach, fused, skip_nonfinite: as in :class:`normctl.AdamWN`; the
            fused path is torch's fused AdamW kernel with each group's λ rescaled per step.

    Equals ``torch.optim.AdamW`` whenever γ_t = γ_max (for instance at a constant lr).
    """

    _describe_role = "corrected"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        max_lr: float | None = None,
        normalized: bool = False,
        decay: str = "l2",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_lr=max_lr,
            normalized=normalized,
            decay=decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
        )
        super().__init__(params, defaults)
        warn_if_nothing_normalized(self)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_nonnegative("eps", group["eps"])
        check_betas(group["betas"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_corrected_decay_keys(group)

    def _init_state(self, param, state: dict, group: dict) -> None:
        state.update(adam_state(param, fused=self._use_fused(group, [param])))

    def _update(self, batches: list[Batch]) -> None:
        self._attach_state(batches)
        for batch in batches:
            decayed_adam_step_(self, batch, corrected_lr_ratio(batch.group))


def decayed_adam_step_(optimizer: NormctlOptimizer, batch: Batch, ratio: float) -> None:
    """AdamW's step on one group's tensors with its decay scaled by ``ratio`` (AdamC's γ_t/γ_max,
    1 for AdamW): torch's fused kernel where it takes them, else the decay then Adam's step."""
    group = batch.group
    if group["decay"] == "l2" and optimizer._use_fused(group, batch.params):
        fused_adamw_(batch.params, batch.grads, batch.states, group, weight_decay=group["weight_decay"] * ratio)
        return
    foreach = optimizer._use_foreach(group)
    rules.apply_decoupled_decay_(
        batch.params, group["decay"], group["lr"] * ratio, group["weight_decay"], foreach=foreach
    )
    adam_update(batch.params, batch.grads, batch.states, group, foreach=foreach)


def check_corrected_decay_keys(group: dict[str, Any]) -> None:
    """The keys AdamC and SGDC share: ``max_lr``, ``normalized``, ``decay``, ``maximize``."""
    check_max_lr(group["max_lr"])
    check_choice("decay", group["decay"], rules.DECAY_KINDS)
    check_bools(group, "normalized", "maximize")
    check_peak_lr_known(group, group["normalized"], "the corrected decay γ_t/γ_max·λ")
