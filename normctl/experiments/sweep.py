"""``normctl sweep``: a grid of configs × seeds, one run directory each, plus a report.

Finished runs (with ``final.json``) are skipped and unfinished ones resume from their
checkpoint, so a sweep that was interrupted is continued by running the same command again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from .config import RunConfig, with_overrides
from .rundir import write_report
from .train import train


def parse_grid(entries: list[str]) -> dict[str, list[str]]:
    """``["method=adamw,adamwn", "lr=1e-3,3e-3"]`` → {"method": [...], "lr": [...]}."""
    grid: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid expects key=v1,v2,..., got {entry!r}")
        grid[key] = [v for v in values.split(",") if v]
    return grid


def sweep_configs(base: RunConfig, grid: dict[str, list[str]], seeds: list[int]) -> list[tuple[str, RunConfig]]:
    """(run name, config) for every grid point and seed; the label names the grid point."""
    keys = list(grid)
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = [f"{k}={v}" for k, v in zip(keys, values)]
        label = ",".join(point) or base.method
        for seed in seeds:
            cfg = with_overrides(base, point + [f"seed={seed}", f"label={label}"])
            runs.append((f"{label.replace(',', '_').replace('=', '-')}_s{seed}", cfg))
    return runs


def run_sweep(
    base: RunConfig, grid: dict[str, list[str]], seeds: list[int], out: str | Path, *, verbose: bool = True
) -> list[dict[str, Any]]:
    out = Path(out)
    runs = sweep_configs(base, grid, seeds)
    results = []
    for i, (name, cfg) in enumerate(runs, 1):
        run_dir = out / name
        if (run_dir / "final.json").is_file():
            if verbose:
                print(f"[{i}/{len(runs)}] {name}: finished, skipped", flush=True)
            results.append({"run": name, **json.loads((run_dir / "final.json").read_text())})
            continue
        if verbose:
            print(f"[{i}/{len(runs)}] {name}", flush=True)
        results.append({"run": name, **train(cfg, run_dir, verbose=verbose)})
    (out / "summary.json").write_text(
        json.dumps({"base": dataclasses.asdict(base), "grid": grid, "seeds": seeds, "results": results}, indent=2)
    )
    write_report(out, [name for name, _ in runs], f"normctl sweep {out.name}", verbose=verbose)
    return results
