"""Run directories: ``config.json`` + ``metrics.jsonl`` per run, and a report over several."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..monitor import JsonlSink


def start_run(run_dir: Path | None, config: dict[str, Any]) -> list[JsonlSink]:
    """Create (or restart) ``run_dir`` with its config; return the monitor's sinks."""
    if run_dir is None:
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return [JsonlSink(run_dir)]


def write_report(out: Path, run_names: list[str], title: str, *, verbose: bool = True) -> Path | None:
    """``out/report.html`` over ``out/<name>`` for each name (skipped without matplotlib)."""
    try:
        from ..report import build_report
    except ImportError:
        if verbose:
            print(f"metrics in {out}/*/metrics.jsonl (install matplotlib for the HTML report)")
        return None
    path = build_report([out / name for name in run_names], out / "report.html", title=title)
    if verbose:
        print(f"report: {path}")
    return path
