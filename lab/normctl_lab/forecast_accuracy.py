"""``normctl-lab forecast-accuracy``: how well ``NormMonitor.forecast`` predicts a decayed group's
norm at the end of a run from its first 10 % — every committed run a test case.

    normctl-lab forecast-accuracy --out results/doctor [--at 0.1] [--results results]

For every finished run under ``--results`` whose optimizer decays decoupled (AdamW, AdamC, Lion,
Muon, MuonC; with param groups or over plain parameters), and each of its groups with λ > 0:
the forecast made at ``--at`` of the run (:func:`normctl.monitor.forecast.from_records` on the
records up to that step, with the run's own lr schedule and decay for the steps to come, as a
user's ``monitor.forecast(total_steps, lr_schedule)`` has them) against the norm the run reached.
Two sources of ‖u‖²: the effective update that moved the group's norm over the second half of the
window (``norms``; every run) and the measured update size and cosine (``updates``; only the runs
recorded since the monitor measures them). The committed curves are thinned (every 4th record):
the window's two norms are records that survive thinning, so the table is what these files give.

Not forecast: norm-controlled groups (AdamWN, the wrappers: their norm is their target), SGD's
coupled L2 (another recurrence), the peers, groups without decay, and runs that ended early.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

from normctl.checks import steady_state_rise
from normctl.monitor.forecast import Forecast, Series, from_records, scheduled
from normctl.report.runs import load_run

from .config import RunConfig
from .methods import BASE_LR_SCALE
from .rundir import strict_json

FORECAST_FAMILIES = ("adamw", "adamc", "lion", "muon", "muonc")  # decoupled decay, not norm-controlled
CORRECTED = ("adamc", "muonc")  # λ_t = λ·γ_t/γ_max on the normalised groups
DECAYED_GROUPS = ("normalized", "decay", "output", "normalized_muon", "decay_muon", "matrices", "other tensors")
TASK_KIND = {"gpt": "GPT", "torchlm": "GPT", "fmnist": "ResNet", "voronoi": "MLP"}


def run_forecast_accuracy(results: str | Path, out: str | Path, *, at: float = 0.1, verbose: bool = True) -> dict:
    if not 0 < at < 1:
        raise ValueError(f"at must be in (0, 1), a fraction of the run, got {at}")
    results, out = Path(results), Path(out)
    cases = []
    run_dirs = sorted(p.parent for p in results.rglob("final.json") if (p.parent / "config.json").is_file())
    for run_dir in run_dirs:
        cases += case_rows(run_dir, at, results)
    summary: dict[str, Any] = {
        "at": at,
        "cases": cases,
        "table": accuracy_table(cases),
        "rise_table": rise_table(cases),
    }
    # the same rows by name, for documents to quote (``doctor rows:adamw/GPT/normalized/norms:median_error``):
    # a row's index moves whenever a run adds a group
    summary["rows"] = {"/".join(str(r[k]) for k in ("method", "model", "group", "source")): r for r in summary["table"]}
    summary["rise_rows"] = {f"{r['method']}/{r['model']}": r for r in summary["rise_table"]}
    summary["where_check_predicts_a_rise"] = predicted_rises(cases)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    if verbose:
        print(table(summary), flush=True)
    return summary


def case_rows(run_dir: Path, at: float, root: Path) -> list[dict[str, Any]]:
    """One row per decayed group of a finished run: the forecasts from both sources and the end."""
    config = json.loads((run_dir / "config.json").read_text())
    final = json.loads((run_dir / "final.json").read_text())
    if config.get("method") not in FORECAST_FAMILIES or final.get("status") != "finished":
        return []
    cfg = RunConfig(**{k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__})
    records = load_run(run_dir).records
    last = records[-1]["step"] if records else 0  # the last record kept: the forecast's end
    if last < 0.95 * cfg.steps:
        return []
    at_step = int(at * cfg.steps)
    peak = cfg.lr * BASE_LR_SCALE.get(cfg.method, 1.0)
    end = records[-1]
    rows: list[dict[str, Any]] = []
    for source in ("norms", "updates"):
        forecasts = from_records(records, at_step=at_step, total_steps=last, future=_schedule(cfg, peak), source=source)
        for f in forecasts:
            measured = end.get(f"group/{f.group}/norm_ratio")
            if f.group not in _decayed(cfg, end) or not isinstance(measured, (int, float)):
                continue
            row = next((r for r in rows if r["group"] == f.group), None)
            if row is None:
                row = {"run": str(run_dir.relative_to(root)), "method": cfg.method, "task": cfg.task,
                       "group": f.group, "measured": measured}  # fmt: skip
                rows.append(row)
            row[source] = f.norm_ratio_end  # None: the loss pulls the weights inward
            row[f"{source}_error"] = None if f.norm_ratio_end is None else f.norm_ratio_end / measured - 1
            if source == "norms" and f.group.startswith("normalized"):
                row |= _ratio_rises(f, cfg, final, records, peak)
    return rows


def _ratio_rises(f: Forecast, cfg: RunConfig, final: dict[str, Any], records: list[dict], peak: float) -> dict:
    """A normalised group's end-of-run rise of ‖g‖/‖θ‖ (the windows of ``tail_rise``): measured,
    forecast along the norm path (``f.ratio_rise``), and what ``normctl.check`` says before the
    run (:func:`normctl.checks.steady_state_rise`: Defazio's (2025) steady state sqrt(2λ/γ_t),
    1 where it predicts no rise). The measured rise is the rise of
    ‖g‖ the run stored from every step (``final.json``'s ``tail_rise``) times the fall of the
    group's norm between the same windows, from the kept records (norms move slowly: thinning
    barely moves their window means)."""
    grad_rise = (final.get("tail_rise") or {}).get(f"group/{f.group}/grad_norm")
    norms = {r["step"]: r[key] for r in records if _finite(r.get(key := f"group/{f.group}/weight_norm"))}
    n = cfg.steps
    mid = [v for s, v in norms.items() if 0.4 * n < s <= 0.6 * n]
    late = [v for s, v in norms.items() if s > n - 0.1 * n]
    if not _finite(grad_rise) or not mid or not late:
        return {}
    if cfg.method in CORRECTED:
        prior = 1.0  # λ_t/γ_t constant: the corrected steady state does not rise
    else:  # check()'s points: the lr at half the run and halfway through its last 10 %
        lr_at, decay_at = _schedule(cfg, peak)(f.group)
        peak_rate = max(lr_at(s) * decay_at(s) for s in range(1, n + 1))
        rise = steady_state_rise(lr_at(n // 2 + 1), lr_at(int(n * 0.95) + 1), n, 1 / (2 * peak_rate))
        prior = 1.0 if rise is None else rise  # None: check predicts no rise
    measured = grad_rise * (sum(mid) / len(mid)) / (sum(late) / len(late))
    return {
        "ratio_rise": measured,
        "ratio_rise_forecast": f.ratio_rise,
        "ratio_rise_forecast_error": None if f.ratio_rise is None else f.ratio_rise / measured - 1,
        "ratio_rise_prior": prior,
        "ratio_rise_prior_error": prior / measured - 1,
    }


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _decayed(cfg: RunConfig, record: dict[str, Any]) -> set[str]:
    labels = {k.split("/")[1] for k in record if k.startswith("group/") and k.endswith("/weight_norm")}
    if cfg.plain and cfg.method == "adamw":
        return labels  # torch's AdamW over model.parameters(): one group, every tensor decayed
    return {g for g in labels if cfg.decay_all or g in DECAYED_GROUPS}


def _schedule(cfg: RunConfig, peak: float) -> Callable[[str], tuple[Series, Series]]:
    """Each group's lr and decay at every optimizer step, as the run's LambdaLR gave them
    (:func:`normctl.monitor.forecast.scheduled`); AdamC's and MuonC's normalised groups decay by
    λ·γ_t/γ_max."""
    top = peak * max(cfg.lr_multiplier(s) for s in range(cfg.steps))

    def of(group: str) -> tuple[Series, Series]:
        corrected = cfg.method in CORRECTED and group.startswith("normalized")
        return scheduled(peak, cfg.lr_multiplier, cfg.weight_decay, top if corrected else None)

    return of


def accuracy_table(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, model kind, group and source: how many groups, how many forecast, the median
    signed error (its direction), and the median and worst relative error of the forecast norm
    ratio against the measured one."""
    groups: dict[tuple[str, str, str, str], list[float | None]] = defaultdict(list)
    for case in cases:
        for source in ("norms", "updates"):
            if source in case:
                kind = TASK_KIND.get(case["task"], case["task"])
                groups[(case["method"], kind, case["group"], source)].append(case[f"{source}_error"])
    rows = []
    for (method, kind, group, source), errors in sorted(groups.items()):
        forecast = [e for e in errors if e is not None]
        rows.append(
            {
                "method": method,
                "model": kind,
                "group": group,
                "source": source,
                "groups": len(errors),
                "forecast": len(forecast),
                "median_error": statistics.median(forecast) if forecast else math.nan,
                "median_abs_error": statistics.median(map(abs, forecast)) if forecast else math.nan,
                "worst_abs_error": max(map(abs, forecast)) if forecast else math.nan,
            }
        )
    return rows


def rise_table(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and model, the normalised groups' end-of-run rise of ‖g‖/‖θ‖: the median
    measured, and the median forecast and relative error of the forecast at ``at`` (the norm path)
    and of the steady state before the run (sqrt(2λ_t/γ_t))."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        if "ratio_rise" in case:
            groups[(case["method"], TASK_KIND.get(case["task"], case["task"]))].append(case)
    rows = []
    for (method, kind), found in sorted(groups.items()):
        row = {
            "method": method,
            "model": kind,
            "runs": len(found),
            "measured": _median([c["ratio_rise"] for c in found]),
        }
        for source in ("forecast", "prior"):
            values = [c[f"ratio_rise_{source}"] for c in found]
            errors = [c[f"ratio_rise_{source}_error"] for c in found]
            row[source] = _median(values)
            row[f"{source}_median_abs_error"] = _median([abs(e) for e in errors if e is not None])
            row[f"{source}_worst_abs_error"] = max((abs(e) for e in errors if e is not None), default=math.nan)
        rows.append(row)
    return rows


def predicted_rises(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs where ``normctl.check`` predicts a rise (its steady state above 1): the range of
    what it said and of what the runs did, and the forecast's median relative error there."""
    found = [c for c in cases if "ratio_rise" in c and c["ratio_rise_prior"] > 1]
    errors = [abs(c["ratio_rise_forecast_error"]) for c in found if c["ratio_rise_forecast_error"] is not None]
    return {
        "runs": len(found),
        "check_min": min((c["ratio_rise_prior"] for c in found), default=math.nan),
        "check_max": max((c["ratio_rise_prior"] for c in found), default=math.nan),
        "measured_min": min((c["ratio_rise"] for c in found), default=math.nan),
        "measured_max": max((c["ratio_rise"] for c in found), default=math.nan),
        "forecast_median_abs_error": _median(errors),
    }


def _median(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def table(summary: dict[str, Any]) -> str:
    out = [
        f"Forecast at {summary['at']:.0%} of each run against the norm ratio it reached, per decayed group "
        "(error: forecast/measured − 1; the median's sign says which way it misses):",
        "",
        "| method | model | group | ‖u‖² from | runs (forecast) | median error "
        "| median \\|error\\| | worst \\|error\\| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        out.append(
            f"| {row['method']} | {row['model']} | {row['group']} | {row['source']} | {row['groups']} "
            f"({row['forecast']}) | {_percent(row['median_error'], '+.1%')} | "
            f"{_percent(row['median_abs_error'], '.1%')} | {_percent(row['worst_abs_error'], '.1%')} |"
        )
    if summary.get("rise_table"):
        out += [
            "",
            "The normalised layers' end-of-run rise of ‖g‖/‖θ‖ (mean over the last 10 % ÷ mean over 40-60 %), "
            f"median over runs: measured; forecast along the norm path at {summary['at']:.0%}; what `normctl.check` "
            "says before the run (Defazio's (2025) steady state sqrt(2λ/γ_t); 1 where it predicts no rise: "
            "a run shorter than 1/(2λγ), a corrected λ):",
            "",
            "| method | model | runs | measured | forecast | its median \\|error\\| | steady state "
            "| its median \\|error\\| |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in summary["rise_table"]:
            out.append(
                f"| {row['method']} | {row['model']} | {row['runs']} | {_number(row['measured'])} | "
                f"{_number(row['forecast'])} | {_percent(row['forecast_median_abs_error'], '.1%')} | "
                f"{_number(row['prior'])} | {_percent(row['prior_median_abs_error'], '.1%')} |"
            )
    return "\n".join(out)


def _number(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def _percent(value: float | None, spec: str) -> str:
    """A fraction as a percentage; "—" where no run was forecast (NaN, stored as null)."""
    return "—" if value is None or math.isnan(value) else format(value, spec)
