"""Reading run directories: ``metrics.jsonl`` (from the monitor) and ``config.json``."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..monitor.phases import detect_phases, tail_blowup_score
from ..monitor.sinks import METRICS_JSONL, RUN_JSON, read_jsonl


@dataclass
class Run:
    path: Path
    label: str  # the method, shared by the seeds of one configuration
    seed: int | None
    records: list[dict[str, Any]] = field(repr=False)
    final: dict[str, Any] = field(default_factory=dict, repr=False)  # final.json, where the run wrote one

    ended: bool = False  # the monitor was closed (run.json), for runs without the lab's final.json

    @property
    def status(self) -> str:
        """ "finished" (the lab's final.json, or a monitor closed at the run's end), "diverged at
        step N", or "unfinished" (running, killed, or a monitor never closed)."""
        if self.final.get("status") == "diverged":
            return f"diverged at step {self.final.get('diverged_at_step')}"
        return "finished" if self.final or self.ended else "unfinished"

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pairs = [
            (r["step"], r[key]) for r in self.records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return values[-1] if values else None

    def keys(self, prefix: str, metric: str) -> list[str]:
        """Keys ``<prefix>/<name>/<metric>`` present in the run, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.records:
            for k in r:
                if k.startswith(prefix + "/") and k.endswith("/" + metric):
                    seen[k] = None
        return list(seen)

    def summary(self) -> dict[str, Any]:
        _, grad = self.series("global/grad_norm")
        return {
            "run": self.path.name,
            "method": self.label,
            "seed": self.seed,
            "status": self.status,
            "steps": self.records[-1]["step"] if self.records else 0,
            "last train loss": self.last("loss"),
            "final norm ratio": self.last("global/norm_ratio"),
            "tail blow-up": tail_blowup_score(grad),
        }

    def layer_phases(self) -> list[dict[str, Any]]:
        """Burn-in / steady / tail of every tensor that has a predicted steady state."""
        rows = []
        for key in self.keys("tensor", "pred_ratio"):
            name = key[len("tensor/") : -len("/pred_ratio")]
            measured_key = f"tensor/{name}/adam_grad_weight_ratio"
            if not self.series(measured_key)[0]:
                measured_key = f"tensor/{name}/grad_weight_ratio"
            measured = dict(zip(*self.series(measured_key)))
            predicted = dict(zip(*self.series(key)))
            steps = sorted(set(measured) & set(predicted))
            if len(steps) < 4:
                continue
            phases = detect_phases([measured[s] for s in steps], [predicted[s] for s in steps])
            steady, tail = (steps[i] if i is not None else None for i in (phases.steady_start, phases.tail_start))
            rows.append(
                {
                    "tensor": name,
                    "steady from step": steady,
                    "tail from step": tail,
                    "tail blow-up": tail_blowup_score([measured[s] for s in steps]),
                }
            )
        return rows


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics = path / METRICS_JSONL
    if not metrics.is_file():
        metrics = path / (METRICS_JSONL + ".gz")  # as packed for committing (scripts/pack_results.py)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass the directories your NormMonitor's JsonlSink wrote")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file: pass the run directory that holds {METRICS_JSONL}")
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: {METRICS_JSONL} is missing")
    records = read_jsonl(metrics)
    if not records:
        raise ValueError(f"{metrics} holds no records: the run logged nothing, or the file is damaged")
    for before, after in zip(records, records[1:]):
        if after["step"] <= before["step"]:
            raise ValueError(
                f"{metrics}: step {after['step']} follows step {before['step']}; the file holds more than one "
                "run (two runs logged into one directory?)"
            )
    # the lab's config.json, else what JsonlSink(label=, seed=) wrote
    about = _json_or_empty(path / RUN_JSON)
    config = _json_or_empty(path / "config.json") or about
    label = str(config.get("label") or config.get("method") or path.name)
    seed = config.get("seed")
    final = _json_or_empty(path / "final.json")
    return Run(path, label, int(seed) if seed is not None else None, records, final, bool(about.get("ended")))


def _json_or_empty(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def by_label(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    return dict(groups)


def mean_std(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and standard deviation across runs at the steps every run logged."""
    per_run = [dict(zip(*run.series(key))) for run in runs]
    steps = sorted(set.intersection(*(set(s) for s in per_run))) if per_run else []
    means, stds = [], []
    for step in steps:
        values = [s[step] for s in per_run]
        mean = sum(values) / len(values)
        means.append(mean)
        stds.append(
            math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) if len(values) > 1 else 0.0
        )
    return steps, means, stds
