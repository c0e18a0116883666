"""Diagnostics: what weight decay and norm control do to a run (read-only)."""

from .monitor import NormMonitor
from .phases import Phases, detect_phases, tail_blowup_score, tail_rise
from .sinks import CsvSink, JsonlSink, MemorySink, TensorBoardSink, read_jsonl
from .stats import Prediction, predict

__all__ = [
    "NormMonitor",
    "JsonlSink",
    "CsvSink",
    "MemorySink",
    "TensorBoardSink",
    "read_jsonl",
    "Phases",
    "detect_phases",
    "tail_blowup_score",
    "tail_rise",
    "Prediction",
    "predict",
]
