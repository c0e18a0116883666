"""What the framework callbacks share: find the torch optimizer, own one monitor, resume it, and
pick the scalars the framework's trackers get."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..checks import Findings
from ..monitor import NormMonitor
from ..monitor.scalars import TRACKER_METRICS, TRACKER_SCOPES, select_scalars
from ..monitor.sinks import Sink

TRACKER_PREFIX = "normctl/"


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The optimizer that actually steps: framework wrappers (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) keep it in ``.optimizer``;
    normctl's own wrappers are optimizers in their own right and are kept."""
    while type(optimizer).__module__.split(".")[0] in ("accelerate", "lightning", "pytorch_lightning"):
        optimizer = optimizer.optimizer
    return optimizer


def give_auto_targets_the_run_length(optimizer, total_steps: int | None, lr_schedule=None) -> None:
    """``target="auto"`` groups that do not know the run's length get the framework's: their
    equilibrium rule then targets the norm AdamW reaches within the run (``AutoTarget.total_steps``)
    rather than its asymptotic one — under the run's lr multiplier ``lr_schedule`` where the
    framework's scheduler gives it (:func:`normctl.schedules.from_lr_scheduler`), else at the
    current lr. A length or schedule the user gave is kept."""
    from ..optim._auto_target import AutoTarget, as_auto_target

    if not total_steps or total_steps < 1:
        return
    for group in getattr(unwrap_optimizer(optimizer), "param_groups", []):
        target = group.get("target")  # another optimizer's group may hold something else under "target"
        auto = (
            as_auto_target(target)
            if target == "auto" and isinstance(target, str) or isinstance(target, AutoTarget)
            else None
        )
        if auto is not None and (auto.total_steps is None or auto.lr_schedule is None):
            group["target"] = dataclasses.replace(
                auto,
                total_steps=int(total_steps) if auto.total_steps is None else auto.total_steps,
                lr_schedule=lr_schedule if auto.lr_schedule is None else auto.lr_schedule,
            )


def name_the_parameters(optimizer, model: nn.Module) -> None:
    """Give each param group without ``param_names`` the model's names for its tensors (torch's
    own group key), so a warning about a tensor names it rather than its position. Groups where
    a tensor is not the model's are left as they are."""
    names = {p: name for name, p in model.named_parameters()}
    for group in getattr(unwrap_optimizer(optimizer), "param_groups", []):
        if "param_names" not in group and all(p in names for p in group["params"]):
            group["param_names"] = [names[p] for p in group["params"]]


class MonitorOwner:
    """Creates the monitor when training starts (continuing a saved state on a resume), closes it
    when training ends, and picks the scalars a record sends to the framework's trackers."""

    def __init__(
        self,
        *,
        every: int | None = None,
        sinks: Iterable[Sink] = (),
        tracker_scopes: Iterable[str] | None = TRACKER_SCOPES,
        tracker_metrics: Iterable[str] | None = TRACKER_METRICS,
    ) -> None:
        self.every = every
        self.sinks = list(sinks)
        self.tracker_scopes = None if tracker_scopes is None else tuple(tracker_scopes)
        self.tracker_metrics = None if tracker_metrics is None else tuple(tracker_metrics)
        self.monitor: NormMonitor | None = None

    def start(
        self, model: nn.Module, optimizer, saved: dict[str, Any] | None = None, logging_every: int = 10
    ) -> NormMonitor:
        """The monitor, measuring on the framework's logging steps (every ``logging_every``-th,
        unless ``every`` was given); ``saved`` (its ``state_dict`` from the checkpoint a run
        resumes from) keeps the step count and the initial norms, which the resumed weights no
        longer show, and drops the records the sinks hold past that step (the resumed run writes
        them again)."""
        if self.monitor is None:
            every = self.every or max(1, int(logging_every))
            self.monitor = NormMonitor(
                model, unwrap_optimizer(optimizer), every=every, sinks=self.sinks, on_multiples=True
            )
            if saved is not None:
                self.monitor.load_state_dict(saved)
                for sink in self.sinks:
                    if hasattr(sink, "drop_after"):
                        sink.drop_after(self.monitor.steps)
        return self.monitor

    def tracker_scalars(self, record: dict[str, Any]) -> dict[str, float]:
        return select_scalars(record, self.tracker_scopes, self.tracker_metrics, prefix=TRACKER_PREFIX)

    def stop(self, *, verdict: bool = False) -> Findings | None:
        """Close the monitor; ``verdict``: print and return what decay did to the run
        (``normctl doctor``'s findings, from the records this monitor wrote)."""
        findings = None
        if self.monitor is not None:
            self.monitor.close()
            if verdict and self.monitor.group_records:
                findings = self.verdict()
                print(f"normctl doctor — what weight decay did to this run:\n{findings}")
            self.monitor = None
        return findings

    def verdict(self) -> Findings:
        """``normctl doctor``'s findings on the records this monitor has written so far."""
        from ..verdict import diagnose_records

        return diagnose_records(self.monitor.group_records if self.monitor is not None else [])
