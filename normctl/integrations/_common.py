"""What the framework callbacks share: find the torch optimizer, own one monitor."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..monitor import NormMonitor
from ..monitor.sinks import Sink


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The optimizer that actually steps: framework wrappers (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) keep it in ``.optimizer``;
    normctl's own wrappers are optimizers in their own right and are kept."""
    while type(optimizer).__module__.split(".")[0] in ("accelerate", "lightning", "pytorch_lightning"):
        optimizer = optimizer.optimizer
    return optimizer


class MonitorOwner:
    """Creates the monitor when training starts and closes it when training ends."""

    def __init__(self, *, every: int = 10, sinks: Iterable[Sink] = ()) -> None:
        self.every = every
        self.sinks = list(sinks)
        self.monitor: NormMonitor | None = None

    def start(self, model: nn.Module, optimizer) -> None:
        if self.monitor is None:
            self.monitor = NormMonitor(model, unwrap_optimizer(optimizer), every=self.every, sinks=self.sinks)

    def observe(self, loss=None) -> None:
        if self.monitor is not None:
            self.monitor.observe(loss=loss)

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
