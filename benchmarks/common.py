"""Helpers for benchmark scripts: machine description, robust timing summaries, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def summary(samples: list[float]) -> dict:
    """Median and spread (quartiles, min, max) of repeated measurements (seconds)."""
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
    return {
        "median": statistics.median(samples),
        "q1": q1,
        "q3": q3,
        "min": min(samples),
        "max": max(samples),
        "repeats": len(samples),
    }


def write_json(name: str, payload: dict) -> Path:
    path = Path(__file__).resolve().parent.parent / "results" / "bench" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
