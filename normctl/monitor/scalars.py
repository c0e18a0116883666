"""The few scalars of a monitor record worth a tracker's chart.

A record holds every tensor's metrics — hundreds of keys for a small model, thousands for a
large one. A tracker (TensorBoard, W&B, MLflow, the frameworks' loggers) gets the headline:
the global norm and the per-group norms, ratios and predictions, which is where weight decay's
effect and the steady-state prediction are read. The full record stays in the JSONL file that
``normctl report`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

TRACKER_SCOPES = ("global", "group")
TRACKER_METRICS = (
    "weight_norm",
    "norm_ratio",
    "grad_norm",
    "clipped_grad_norm",
    "grad_weight_ratio",
    "adam_grad_weight_ratio",  # for Adam-family groups the ratio pred_ratio predicts (‖g‖_{A⁻¹}/‖θ‖_A)
    "pred_ratio",
)


def select_scalars(
    record: dict[str, Any],
    scopes: Iterable[str] | None = TRACKER_SCOPES,
    metrics: Iterable[str] | None = TRACKER_METRICS,
    prefix: str = "",
) -> dict[str, float]:
    """The finite scalars of ``record`` whose scope (the key's first part: ``tensor``, ``layer``,
    ``group``, ``global``) is in ``scopes`` and whose metric (its last part) is in ``metrics``,
    keys prefixed with ``prefix``. ``None`` keeps every scope or every metric. The record's own
    ``step``, ``loss`` and ``lr/...`` are left out: the framework logs its own."""
    scope_set = None if scopes is None else set(scopes)
    metric_set = None if metrics is None else set(metrics)
    out = {}
    for key, value in record.items():
        scope, _, rest = key.partition("/")
        if not rest or scope == "lr" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        if scope_set is not None and scope not in scope_set:
            continue
        if metric_set is not None and key.rpartition("/")[2] not in metric_set:
            continue
        out[prefix + key] = float(value)
    return out
