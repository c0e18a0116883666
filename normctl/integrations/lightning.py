"""PyTorch Lightning: a ``Callback`` that feeds :class:`normctl.monitor.NormMonitor`.

Return a normctl optimizer from ``configure_optimizers`` as any other::

    class Model(L.LightningModule):
        def configure_optimizers(self):
            opt = normctl.create_optimizer(self, "adamwn", lr=1e-3, target=1.5)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, normctl.schedules.cosine(1, 0.1, 10_000))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    L.Trainer(callbacks=[NormMonitorCallback(every=10, sinks=[JsonlSink("runs/pl")])]).fit(Model())
"""

from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]

from ._common import MonitorOwner


class NormMonitorCallback(pl.Callback):
    """Monitors the first optimizer of the LightningModule, with the training loss."""

    def __init__(self, *, every: int = 10, sinks=()) -> None:
        super().__init__()
        self.owner = MonitorOwner(every=every, sinks=sinks)

    @property
    def monitor(self):
        return self.owner.monitor

    def on_train_start(self, trainer, pl_module) -> None:
        self.owner.start(pl_module, trainer.optimizers[0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.owner.observe(loss)

    def on_train_end(self, trainer, pl_module) -> None:
        self.owner.stop()
