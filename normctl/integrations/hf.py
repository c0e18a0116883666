"""Hugging Face Transformers: a ``TrainerCallback`` that feeds :class:`normctl.monitor.NormMonitor`.

Use normctl's optimizers with the Trainer in either of two ways::

    from normctl import AdamWN, create_optimizer
    trainer = Trainer(model, args, train_dataset=ds,
                      optimizer_cls_and_kwargs=(AdamWN, {"lr": 3e-4, "target": 1.5}))
    # or, with normctl's own grouping (controlled / normalised / no-decay, and why):
    trainer = Trainer(model, args, train_dataset=ds,
                      optimizers=(create_optimizer(model, "adamc", lr=3e-4), None),
                      callbacks=[NormMonitorCallback(every=10, sinks=[JsonlSink("runs/hf")])])
"""

from __future__ import annotations

from transformers import TrainerCallback

from ._common import MonitorOwner


class NormMonitorCallback(TrainerCallback):
    """Attaches a NormMonitor to the Trainer's model and optimizer for the whole of training."""

    def __init__(self, *, every: int = 10, sinks=()) -> None:
        self.owner = MonitorOwner(every=every, sinks=sinks)

    @property
    def monitor(self):
        return self.owner.monitor

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.owner.start(model, optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        self.owner.observe()

    def on_train_end(self, args, state, control, **kwargs):
        self.owner.stop()
