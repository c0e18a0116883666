"""``normctl-lab sweep``: a grid of configs × seeds, one run directory each, plus a report.

Finished runs (with ``final.json``) are skipped and unfinished ones resume from their
checkpoint, so a sweep that was interrupted is continued by running the same command again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from normctl.groups import GROUP_FLAGS, param_groups
from normctl.report.runs import load_run

from .cluster import EXECUTORS, submit_runs
from .config import RunConfig, with_overrides
from .methods import norm_gains
from .paired import mean_std
from .progress import progress
from .rundir import strict_json, write_report
from .train import RunInterrupted, build_task, config_differences, train
from .workers import ChildProcesses

CONTROLLED_GROUPS = [label for label, (control, _, _) in GROUP_FLAGS.items() if control]


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
    base: RunConfig,
    grid: dict[str, list[str]],
    seeds: list[int],
    out: str | Path,
    *,
    workers: int = 1,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    out = Path(out)
    runs = sweep_configs(base, grid, seeds)
    results = train_runs(
        runs, out, workers=workers, executor=executor, executor_options=executor_options, verbose=verbose
    )
    summary = {"base": dataclasses.asdict(base), "grid": grid, "seeds": seeds, "results": results}
    summary["labels"] = label_statistics(results)
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    write_report(out, [name for name, _ in runs], f"normctl-lab sweep {out.name}", verbose=verbose)
    return results


def label_statistics(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label (grid point), mean ± std over its seeds of every number the runs' final.json
    hold — the test metrics, and each entry of ``tail_rise`` and ``norm_ratio`` — for documents
    to quote (``labels:<label>:tail_rise:global/grad_norm``)."""
    by_label: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["label"] for r in results):
        runs = [r for r in results if r["label"] == label and r.get("status") == "finished"]
        stats: dict[str, Any] = {}
        for key, value in runs[0].items() if runs else ():
            if _is_number(value) and key not in ("seed", "steps"):
                stats[key] = mean_std([r[key] for r in runs if _is_number(r.get(key))])
            elif isinstance(value, dict):
                entries = {k: [r[key][k] for r in runs if _is_number(r.get(key, {}).get(k))] for k in value}
                stats[key] = {k: mean_std(values) for k, values in entries.items() if values}
        by_label[label] = stats
    return by_label


def _is_number(value: Any) -> bool:  # a statistic with no value (NaN) is stored as null
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def train_runs(
    runs: list[tuple[str, RunConfig]],
    out: Path,
    *,
    workers: int = 1,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Train each ``(name, config)`` into ``out/name`` unless it has finished (``final.json``);
    unfinished runs resume from their checkpoints (one stopped before its first checkpoint starts
    over: the sweep wrote it, and only its first steps' records are lost). ``workers > 1`` trains
    that many at once, each in a single-threaded process (on a CPU that suits small models; wide
    ones train as fast one at a time on every core, see ``benchmarks/cpu_parallelism.py``), and
    Ctrl-C or SIGTERM stops them at their last checkpoints (:mod:`.workers`);
    ``executor="submitit"`` submits one cluster job per run instead (:mod:`.cluster`). Returns
    every run's final metrics, in order."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    refuse_finished_with_another_config(runs, out)
    todo = [(name, cfg) for name, cfg in runs if not (out / name / "final.json").is_file()]
    if verbose:
        print(f"{len(runs) - len(todo)} of {len(runs)} runs finished; training {len(todo)}", flush=True)
    if executor == "submitit":
        if todo:
            submit_runs(todo, out, executor_options or {}, verbose=verbose)
    elif workers == 1:
        for i, (name, cfg) in enumerate(todo, 1):
            if verbose:
                print(f"[{i}/{len(todo)}] {name}", flush=True)
            train(cfg, out / name, verbose=verbose, restart_unsaved=True)
    else:
        started = time.monotonic()
        children = ChildProcesses()
        with ThreadPoolExecutor(workers) as pool, progress(len(todo), unit="run", enabled=verbose) as bar:
            running: list[Future] = []
            try:
                running += [pool.submit(_train_in_process, out, *run, children) for run in todo]
                for done, future in enumerate(as_completed(running), 1):
                    name, error = future.result()
                    if error:
                        for waiting in running:
                            waiting.cancel()  # runs not started yet; those training finish first
                        raise RuntimeError(f"{name} failed:\n{error}")
                    left = time_left(time.monotonic() - started, done, len(todo))
                    bar.note(f"  {name} finished ({done} of {len(todo)}{left}): {headline(final_metrics(out, name))}")
                    bar.update(1)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the children stop at their last checkpoints
                for waiting in running:
                    waiting.cancel()
                children.interrupt()
                raise RunInterrupted(
                    "interrupted; the runs in training stopped at their last checkpoints and finished runs are kept: "
                    "run the same command to resume"
                ) from None
    return [{"run": name, **final_metrics(out, name)} for name, _ in runs]


def refuse_finished_with_another_config(runs: list[tuple[str, RunConfig]], out: Path) -> None:
    """A finished run is skipped, so it must be the run asked for: one trained with another
    configuration (a search space or a rule changed since) would be reported as this one."""
    stale = {}
    for name, cfg in runs:
        saved = out / name / "config.json"
        if (out / name / "final.json").is_file() and saved.is_file():
            differences = config_differences(json.loads(saved.read_text()), cfg)
            if differences:
                stale[name] = differences
    if stale:
        lines = [
            f"  {name}: " + ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in d.items()) for name, d in stale.items()
        ]
        raise ValueError(
            f"{len(stale)} finished run(s) in {out} were trained with another configuration than the one asked for "
            "(saved → asked):\n"
            + "\n".join(lines[:10])
            + ("\n  …" if len(lines) > 10 else "")
            + "\nMove them out of the directory (or use another --out) to train what is asked; nothing was changed."
        )


def headline(final: dict[str, Any]) -> str:
    """A finished run's held-out numbers, for a log line (the rest is in its ``final.json``)."""
    shown = [
        f"{key} {value:.4f}" for key, value in final.items() if key.endswith(("_loss", "_acc")) and _is_number(value)
    ]
    return ", ".join(shown) or final.get("status", "finished")


def time_left(elapsed: float, done: int, total: int) -> str:
    """``, ~1 h 40 min left`` from the pace so far (runs of one kind take about the same time)."""
    if done >= total:
        return ""
    minutes = round(elapsed / done * (total - done) / 60)
    return f", ~{minutes // 60} h {minutes % 60} min left" if minutes >= 60 else f", ~{max(minutes, 1)} min left"


def final_metrics(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / name / "final.json").read_text())


def _train_in_process(out: Path, name: str, cfg: RunConfig, children: ChildProcesses) -> tuple[str, str | None]:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    request = run_dir / "request.json"  # the config handed to the child; train writes config.json
    request.write_text(cfg.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "normctl_lab.cli", "train", str(request), "--out", str(run_dir)]
    command.append("--restart-unsaved")  # its own run, killed before its first checkpoint: start it over
    done = children.run(command, env)
    request.unlink(missing_ok=True)
    if done is None:  # interrupted before it started
        return name, None
    returncode, stderr = done
    finished = (run_dir / "final.json").is_file()  # a diverged run exits non-zero but has finished
    return name, (stderr[-2000:] if returncode and not finished else None)


def controlled_norm_ratio(run_dir: Path, labels: list[str] | None = None) -> float:
    """‖θ‖/‖θ₀‖ at the end of a run over the tensors AdamW decays and AdamWN controls — the
    ``normalized`` and ``decay`` groups of ``param_groups``, every group with ``decay_all`` —
    from the monitor's last per-group record.

    Not the global ratio where the norm gains are left alone: they (norm √d each, initialised at
    1) weigh heavily in the global norm of a small model, so its ratio says little about the
    matrices AdamWN controls. ``labels`` names the groups instead."""
    if labels is None:
        config = json.loads((run_dir / "config.json").read_text())
        labels = list(GROUP_FLAGS) if config.get("decay_all") else CONTROLLED_GROUPS
    record = load_run(run_dir).records[-1]
    prefixes = [f"group/{label}" for label in labels]
    if not any(f"{prefix}/weight_norm" in record for prefix in prefixes):
        # an optimizer whose groups carry no names (the peers): the same tensors, one by one
        prefixes = [f"tensor/{name}" for name in _tensor_names(run_dir, labels)]
    return _joint_norm_ratio(record, prefixes)


def _tensor_names(run_dir: Path, labels: list[str]) -> list[str]:
    """The names of the tensors ``param_groups`` puts in the groups ``labels``, for the run's model."""
    cfg = RunConfig.from_file(run_dir / "config.json")
    model = build_task(cfg).model
    names = {id(p): name for name, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=cfg.weight_decay, control_output=cfg.control_output)  # as it trained
    return [names[id(p)] for g in groups if g["name"] in labels for p in g["params"]]


def gains_norm_ratio(run_dir: Path) -> float:
    """‖g‖/‖g₀‖ at the end of a run over the norm layers' gains together, from the monitor's
    last per-tensor record — the target that leaves them where the run left them."""
    model = build_task(RunConfig.from_file(run_dir / "config.json")).model
    return _joint_norm_ratio(load_run(run_dir).records[-1], [f"tensor/{name}" for name in norm_gains(model)])


def _joint_norm_ratio(record: dict[str, Any], prefixes: list[str]) -> float:
    """The norm ratio of the tensors (or groups) under ``prefixes`` taken as one vector."""
    now = then = 0.0
    for prefix in prefixes:
        if f"{prefix}/weight_norm" not in record:  # a model without such tensors
            continue
        norm, ratio = record[f"{prefix}/weight_norm"], record[f"{prefix}/norm_ratio"]
        now += norm**2
        then += (norm / ratio) ** 2
    return math.sqrt(now / then)
