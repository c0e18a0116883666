"""PyTorch Lightning: a ``Callback`` that feeds :class:`normctl.monitor.NormMonitor`.

Return a normctl optimizer from ``configure_optimizers`` as any other::

    class Model(L.LightningModule):
        def configure_optimizers(self):
            opt = normctl.create_optimizer(self, "adamwn", lr=1e-3, target=1.5)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, normctl.schedules.cosine(1, 0.1, 10_000))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    L.Trainer(callbacks=[NormMonitorCallback(every=10, sinks=[JsonlSink("runs/pl")])]).fit(Model())

Lightning runs the backward pass inside ``optimizer.step(closure)``, after the hook the monitor
measures in, and clips the gradients between the two; the callback takes the gradient norms in
``on_before_optimizer_step`` instead — after backward, before clipping — and the record keeps the
norm the optimizer stepped with as ``global/clipped_grad_norm``. The headline scalars
(:mod:`normctl.monitor.scalars`) go to every logger of the Trainer (``trainer.loggers``:
TensorBoard, W&B, MLflow, CSV …) prefixed ``normctl/``; the sinks get the whole record. The
monitor's state is saved in Lightning's checkpoints and continued on a resume.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]

from ..checks import check
from ..monitor.scalars import TRACKER_METRICS, TRACKER_SCOPES
from ..schedules import from_lr_scheduler
from ._common import MonitorOwner, give_auto_targets_the_run_length, name_the_parameters, unwrap_optimizer


class NormMonitorCallback(pl.Callback):
    """Monitors the first optimizer of the LightningModule, with the training loss.

    It measures on Lightning's logging steps (``log_every_n_steps``) unless ``every`` is given,
    and logs at the x Lightning plots that step's own metrics at. The loss recorded is the step's:
    the mean of its micro-batches' losses under ``accumulate_grad_batches`` (Lightning hands the
    callback each one divided by their number). ``tracker_scopes`` / ``tracker_metrics`` choose
    what reaches ``trainer.loggers`` (None: everything, one chart per tensor and metric)."""

    def __init__(
        self,
        *,
        every: int | None = None,
        sinks=(),
        tracker_scopes=TRACKER_SCOPES,
        tracker_metrics=TRACKER_METRICS,
        check: bool = True,
    ) -> None:
        super().__init__()
        self.check = check  # print normctl.check's findings when training starts, the verdict when it ends
        self.owner = MonitorOwner(
            every=every, sinks=sinks, tracker_scopes=tracker_scopes, tracker_metrics=tracker_metrics
        )
        self._saved: dict[str, Any] | None = None
        self._losses: list[float] = []  # the micro-batches' losses since the last optimizer step
        self._stepped = 0  # trainer.global_step at the last optimizer step seen

    @property
    def monitor(self):
        return self.owner.monitor

    def on_train_start(self, trainer, pl_module) -> None:
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        known = int(steps) if steps != float("inf") and steps > 0 else None
        schedule = _step_schedule(trainer, known)
        give_auto_targets_the_run_length(trainer.optimizers[0], known, schedule)
        name_the_parameters(trainer.optimizers[0], pl_module)
        if self.check and trainer.is_global_zero:  # what decay will do to this run, before its first step
            findings = check(unwrap_optimizer(trainer.optimizers[0]), pl_module, steps=known, lr_schedule=schedule)
            print(findings, flush=True)
            _to_loggers(trainer, "normctl/check", findings, step=trainer.global_step)
        self.owner.start(pl_module, trainer.optimizers[0], self._saved, logging_every=trainer.log_every_n_steps)
        self._losses, self._stepped = [], trainer.global_step
        # Lightning steps through a closure: the optimizer's pre-step hook runs before backward,
        # and on_before_optimizer_step below takes the gradients once they are there
        self.monitor.gradients_captured = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None:
            self.monitor.capture_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # Lightning divides each micro-batch's loss by their number
            self._losses.append(float(loss) * trainer.accumulate_grad_batches)
        if trainer.global_step == self._stepped or self.monitor is None:
            return  # an accumulating micro-batch: the optimizer has not stepped
        self._stepped = trainer.global_step
        losses, self._losses = self._losses, []
        record = self.monitor.observe(sum(losses) / len(losses) if losses else None)
        if record is not None and trainer.loggers:
            scalars = self.owner.tracker_scalars(record)
            for logger in trainer.loggers:  # the x Lightning logs this step's own metrics at
                logger.log_metrics(scalars, step=trainer.global_step - 1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:  # a checkpoint saved after fit still continues the records
            self._saved = self.monitor.state_dict()
        verdict = self.owner.stop(verdict=self.check and trainer.is_global_zero)
        if verdict is not None:
            _to_loggers(trainer, "normctl/verdict", verdict, step=max(0, trainer.global_step - 1))

    def state_dict(self) -> dict[str, Any]:
        state = self.monitor.state_dict() if self.monitor is not None else self._saved
        return {"monitor": state} if state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("monitor")


def _step_schedule(trainer, total_steps: int | None):
    """The lr multiplier of the first optimizer's scheduler where Lightning steps it every
    optimizer step and it is a LambdaLR (:func:`normctl.schedules.from_lr_scheduler`); None for an
    epoch-wise one, whose multiplier counts epochs, not steps."""
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        if config.interval == "step" and config.frequency == 1 and total_steps:
            return from_lr_scheduler(config.scheduler, total_steps)
    return None


def _to_loggers(trainer, prefix: str, findings, step: int) -> None:
    """The findings to every logger: their text as a hyperparameter (``prefix``), the only text
    Lightning's Logger API carries, and their counts as metrics."""
    for logger in trainer.loggers:
        logger.log_hyperparams({prefix: str(findings)})
        logger.log_metrics(findings.scalars(prefix), step=step)
