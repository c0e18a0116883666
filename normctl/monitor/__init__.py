"""Diagnostics: what weight decay and norm control do to a run (read-only)."""

from .monitor import NormMonitor
from .phases import Phases, detect_phases, tail_blowup_score, tail_rise
from .scalars import TRACKER_METRICS, TRACKER_SCOPES, select_scalars
from .sinks import CsvSink, JsonlSink, MemorySink, TensorBoardSink, read_jsonl
from .stats import Prediction, predict

__all__ = [
    "NormMonitor",
    "JsonlSink",
    "CsvSink",
    "MemorySink",
    "TensorBoardSink",
    "read_jsonl",
    "select_scalars",
    "TRACKER_SCOPES",
    "TRACKER_METRICS",
    "Phases",
    "detect_phases",
    "tail_blowup_score",
    "tail_rise",
    "Prediction",
    "predict",
]
