"""Runs of a sweep or a tuning as cluster jobs, through submitit (the lab's ``cluster`` extra).

    normctl-lab sweep ... --executor submitit --executor-option slurm_partition=gpu \\
        --executor-option timeout_min=120 --executor-option gpus_per_node=1

One job per run, submitted as one Slurm job array; each job trains its run directory exactly as
``normctl-lab train`` does (atomic checkpoints, resumable), so a job that a cluster pre-empts or a
sweep cut short continues when the same command runs again: finished runs are skipped, the others
resume from their checkpoints. ``--executor-option cluster=local`` runs the jobs as processes on
this machine (how the tests run it); any other option goes to submitit's ``update_parameters``
(``slurm_partition``, ``timeout_min``, ``cpus_per_task``, ``mem_gb``, ``slurm_array_parallelism``
…), numbers as numbers. Job logs: ``<out>/submitit/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import RunConfig

EXECUTORS = ("local", "submitit")
DEFAULTS = {"timeout_min": 24 * 60, "cpus_per_task": 1, "name": "normctl-lab"}


def parse_options(assignments: list[str]) -> dict[str, Any]:
    """``["timeout_min=60", "slurm_partition=gpu"]`` → {"timeout_min": 60, "slurm_partition": "gpu"}."""
    options: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--executor-option expects key=value, got {assignment!r}")
        try:
            options[key] = json.loads(raw)  # 60 → 60, 1.5 → 1.5, true → True
        except json.JSONDecodeError:
            options[key] = raw
    return options


def submit_runs(runs: list[tuple[str, RunConfig]], out: Path, options: dict[str, Any], *, verbose: bool = True) -> None:
    """Train ``runs`` (name, config) into ``out/name`` as submitit jobs and wait for them all;
    a job that failed raises naming its run and its log."""
    try:
        import submitit
    except ImportError as error:
        raise ImportError("--executor submitit needs submitit: pip install 'normctl-lab[cluster]'") from error
    options = dict(options)
    executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=options.pop("cluster", None))
    executor.update_parameters(**(DEFAULTS | options))
    with executor.batch():  # one job array
        jobs = [executor.submit(train_job, cfg.to_json(), str(out / name)) for name, cfg in runs]
    if verbose:
        print(f"submitted {len(jobs)} jobs ({executor.cluster}); logs in {out / 'submitit'}", flush=True)
    failed = []
    for (name, _), job in zip(runs, jobs):
        try:
            job.result()
        except Exception as error:  # submitit re-raises the job's error with its traceback
            failed.append(f"{name} (job {job.job_id}): {str(error).strip().splitlines()[-1]}")
    if failed:
        raise RuntimeError("runs failed:\n  " + "\n  ".join(failed) + f"\n(logs in {out / 'submitit'})")


def train_job(config_json: str, run_dir: str) -> dict[str, Any]:
    """One run, in a job: the config travels as JSON, so the job needs only the installed lab."""
    from .train import train

    return train(RunConfig(**json.loads(config_json)), Path(run_dir), verbose=False, restart_unsaved=True)
