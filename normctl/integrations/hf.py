"""Hugging Face Transformers: a ``TrainerCallback`` that feeds :class:`normctl.monitor.NormMonitor`.

Use normctl's optimizers with the Trainer in either of two ways::

    from normctl import AdamWN, create_optimizer
    trainer = Trainer(model, args, train_dataset=ds,
                      optimizer_cls_and_kwargs=(AdamWN, {"lr": 3e-4, "target": 1.5}))
    # or, with normctl's own grouping (controlled / normalised / no-decay, and why):
    trainer = Trainer(model, args, train_dataset=ds,
                      optimizers=(create_optimizer(model, "adamc", lr=3e-4), None))
    normctl.integrations.hf.attach(trainer, every=10, sinks=[JsonlSink("runs/hf")])

On every measured step the callback asks the Trainer to log, and completes the record from that
log: the loss (the Trainer's mean since its previous log) and the gradient norms *before*
clipping. The Trainer clips all gradients by one factor, min(1, max_grad_norm / (‖g‖ + 1e-6)),
and logs ‖g‖ from before it, so the monitor's norms, taken at the step, are divided by that
factor; ``global/clipped_grad_norm`` keeps the norm the optimizer stepped with. The headline
scalars (:mod:`normctl.monitor.scalars`) go into the same log, prefixed ``normctl/``, so every
``report_to`` tracker after this callback receives them — :func:`attach` puts it first.

The monitor's state (its step count and the initial norms) is saved beside each Trainer
checkpoint as ``normctl_monitor.json`` and read back when the Trainer resumes from that
checkpoint; a ``JsonlSink(..., resume=True)`` then drops the records past the checkpoint's step,
which the resumed run writes again. (DeepSpeed clips inside its engine: there the norms are the
clipped ones, as ``global/clipped_grad_norm`` then shows by its absence.)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

from transformers import TrainerCallback

from ..checks import check
from ..monitor.scalars import TRACKER_METRICS, TRACKER_SCOPES
from ..schedules import from_lr_scheduler
from ._common import MonitorOwner, give_auto_targets_the_run_length, name_the_parameters, unwrap_optimizer

CHECKPOINT_FILE = "normctl_monitor.json"
UNCLIPPED_METRICS = ("grad_norm", "grad_weight_ratio")  # proportional to the gradient


def clip_factor(total_norm: float, max_norm: float) -> float:
    """The factor ``torch.nn.utils.clip_grad_norm_`` multiplies every gradient by."""
    return min(1.0, max_norm / (total_norm + 1e-6))


def unclipped(record: dict[str, Any], factor: float) -> dict[str, Any]:
    """``record`` with its gradient norms (and gradient-to-weight ratios) divided by the clip
    ``factor``, and the global norm as measured kept as ``global/clipped_grad_norm``."""
    out = dict(record)
    out["global/clipped_grad_norm"] = record["global/grad_norm"]
    for key, value in record.items():
        if key.rpartition("/")[2] in UNCLIPPED_METRICS and isinstance(value, float):
            out[key] = value / factor
    return out


class NormMonitorCallback(TrainerCallback):
    """Attaches a NormMonitor to the Trainer's model and optimizer for the whole of training.

    It measures on the Trainer's logging steps (``logging_steps``: steps 10, 20, … beside the
    Trainer's own logs) unless ``every`` is given. ``tracker_scopes`` / ``tracker_metrics`` choose
    what reaches the Trainer's trackers (None: everything, one chart per tensor and metric); the
    sinks get the whole record."""

    def __init__(
        self,
        *,
        every: int | None = None,
        sinks=(),
        tracker_scopes=TRACKER_SCOPES,
        tracker_metrics=TRACKER_METRICS,
        check: bool = True,
    ) -> None:
        self.check = check  # print normctl.check's findings when training starts, the verdict when it ends
        self.owner = MonitorOwner(
            every=every, sinks=sinks, tracker_scopes=tracker_scopes, tracker_metrics=tracker_metrics
        )
        self.max_grad_norm = 0.0
        self._check_scalars: dict[str, int] = {}  # the check's counts, for the trackers' first log

    @property
    def monitor(self):
        return self.owner.monitor

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.max_grad_norm = args.max_grad_norm or 0.0
        # the Trainer's schedulers are LambdaLRs: their multiplier is the run's lr schedule
        schedule = from_lr_scheduler(kwargs.get("lr_scheduler"), state.max_steps)
        give_auto_targets_the_run_length(optimizer, state.max_steps, schedule)
        if model is not None:
            name_the_parameters(optimizer, model)
        if self.check and state.is_world_process_zero and model is not None and optimizer is not None:
            findings = check(unwrap_optimizer(optimizer), model, steps=state.max_steps or None, lr_schedule=schedule)
            print(findings, flush=True)
            self._check_scalars = findings.scalars("normctl/check")
        self.owner.start(model, optimizer, _saved_state(args, state), logging_every=_logging_steps(args, state))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None and self.monitor.pending is not None:  # the Trainer did not log it
            warnings.warn(
                f"the Trainer did not log step {self.monitor.pending['step']}: its record has no loss, "
                "and its gradient norms are those after clipping",
                stacklevel=2,
            )
            self.monitor.observe()

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None and self.monitor.pending is not None:
            control.should_log = True  # the log brings the loss and the norm before clipping

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        # the trackers get numbers only: how many findings the check and the verdict had (the text is printed)
        logs.update(self._check_scalars)
        self._check_scalars = {}
        if self.check and "train_runtime" in logs and state.is_world_process_zero:  # the Trainer's last log
            logs.update(self.owner.verdict().scalars("normctl/verdict"))
        monitor = self.monitor
        if monitor is None or monitor.pending is None:
            return
        record = monitor.pending
        if self.max_grad_norm > 0 and logs.get("grad_norm") is not None:
            record.update(unclipped(record, clip_factor(float(logs["grad_norm"]), self.max_grad_norm)))
        written = monitor.observe(loss=logs.get("loss"))
        if written is not None:
            logs.update(self.owner.tracker_scalars(written))

    def on_save(self, args, state, control, **kwargs):
        if self.monitor is None or not state.is_world_process_zero:
            return
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(directory):
            with open(os.path.join(directory, CHECKPOINT_FILE), "w", encoding="utf-8") as f:
                json.dump(self.monitor.state_dict(), f)

    def on_train_end(self, args, state, control, **kwargs):
        # closing the monitor writes a record still pending; then the verdict, on the main process
        self.owner.stop(verdict=self.check and state.is_world_process_zero)


def attach(trainer, **kwargs) -> NormMonitorCallback:
    """A :class:`NormMonitorCallback` (``kwargs`` as its own) put first among ``trainer``'s
    callbacks, so that the trackers ``report_to`` added receive its scalars."""
    callback = NormMonitorCallback(**kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def _logging_steps(args, state) -> int:
    """The Trainer's logging interval in steps (``logging_steps`` below 1 is a fraction of the run)."""
    steps = args.logging_steps
    return max(1, math.ceil(steps * state.max_steps)) if 0 < steps < 1 else max(1, int(steps))


def _saved_state(args, state) -> dict[str, Any] | None:
    """The monitor state saved with the checkpoint the Trainer resumed from, if it resumed."""
    if not state.global_step:
        return None
    path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", CHECKPOINT_FILE)
    if not os.path.isfile(path):
        warnings.warn(
            f"resuming at step {state.global_step} without {path}: norm ratios are measured against the "
            "resumed weights and the monitor counts steps from there",
            stacklevel=3,
        )
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
