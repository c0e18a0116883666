"""Run directories: ``config.json`` + ``metrics.jsonl`` per run, and a report over several."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from normctl.monitor import JsonlSink

from .peers import peer_versions


def start_run(run_dir: Path | None, config: dict[str, Any]) -> list[JsonlSink]:
    """Create (or restart) ``run_dir`` with its config and what produced it (``environment.json``);
    return the monitor's sinks."""
    if run_dir is None:
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "final.json").unlink(missing_ok=True)  # a restarted run is not finished until it says so
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    record_environment(run_dir, describe_environment())
    return [JsonlSink(run_dir)]


def finish_run(run_dir: Path | None, record: dict[str, Any]) -> None:
    """Write what a finished run measured (``final.json``, strict JSON: a diverged run's NaN is
    null): the mark of a finished run, which resuming and packing read."""
    if run_dir is not None:
        (run_dir / "final.json").write_text(strict_json(record, indent=2))


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON without NaN or Infinity (which strict parsers reject): non-finite floats become null."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def record_environment(run_dir: Path, environment: dict[str, Any], *, resumed_at: int | None = None) -> None:
    """``run_dir/environment.json``: what started the run, and for each resume (``resumed_at``: the
    checkpoint's step) what changed since — a run that continued on another revision, torch or
    machine says so, and keeps what it started on."""
    path = run_dir / "environment.json"
    if resumed_at is not None and path.is_file():
        record = json.loads(path.read_text())
        known = {k: v for k, v in record.items() if k != "resumed"}
        for resume in record.get("resumed", []):  # the environment as the last resume left it
            known.update({k: v for k, v in resume.items() if k != "step"})
        changed = {k: v for k, v in environment.items() if known.get(k) != v}
        record["resumed"] = [*record.get("resumed", []), {"step": resumed_at, **changed}]
        environment = record
    path.write_text(json.dumps(environment, indent=2))


def describe_environment(**extra: Any) -> dict[str, Any]:
    """What produced a run: versions, machine and the git revision of the code (if any)."""
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "peers": peer_versions(),  # pytorch-cpr, heavyball where installed
        "git_revision": _git(["rev-parse", "HEAD"]),
        "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"])),
    }
    info.update(extra)
    return info


def _git(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def write_report(
    out: Path,
    run_names: list[str],
    title: str,
    *,
    labels: list[str] | None = None,
    verbose: bool = True,
    lead: tuple[tuple[str, str, bool, str], ...] = (),
) -> Path | None:
    """``out/report.html`` over ``out/<name>`` for each name, grouped by ``labels`` where given,
    ``lead`` its first charts (skipped without matplotlib)."""
    from normctl.report import build_report

    try:
        import matplotlib  # noqa: F401  (the report's figures)
    except ImportError:
        if verbose:
            print(f"metrics in {out}/*/metrics.jsonl (install matplotlib for the HTML report)")
        return None
    path = build_report([out / name for name in run_names], out / "report.html", title=title, labels=labels, lead=lead)
    if verbose:
        print(f"report: {path}")
    return path


def resumable_summary(path: Path, seeds: list[int], empty: dict[str, Any]) -> dict[str, Any]:
    """The summary.json a comparison keeps adding to (``empty`` where there is none yet), refused
    where it summarises other seeds — its parts must pair seed by seed."""
    summary: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else empty
    if summary.get("seeds", seeds) != seeds:
        raise ValueError(f"{path} summarises seeds {summary['seeds']}, not {seeds}: use another --out")
    summary["seeds"] = seeds
    return summary
