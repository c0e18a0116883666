"""``normctl-lab forecast-accuracy``: each finished run's forecast at a fraction of the run against
the norm it reached, with the run's own schedule and decay (AdamC's scaled by γ_t/γ_max)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from normctl_lab.config import RunConfig, with_overrides
from normctl_lab.forecast_accuracy import run_forecast_accuracy

from normctl import rules
from normctl.checks import steady_state_rise
from normctl.monitor import tail_rise


def _run_made_by_the_recurrence(directory, method: str, update_sq: float = 4.0):
    """A run folder whose normalised group's norm follows the decay recurrence exactly, with the
    lr LambdaLR gives step s (the multiplier of s − 1) and AdamC's λ·γ_t/γ_max where it corrects."""
    cfg = with_overrides(RunConfig(), [f"method={method}", "steps=400", "warmup=20", "lr=0.01", "weight_decay=0.5"])
    m = cfg.lr_multiplier
    top = max(m(s) for s in range(cfg.steps))
    norm_sq, records, grad_norms = 1.0, [], []
    for s in range(1, cfg.steps + 1):
        decay = cfg.weight_decay * (m(s - 1) / top if method == "adamc" else 1.0)
        norm_sq = rules.decayed_norm_sq_after(norm_sq, update_sq, [(cfg.lr * m(s - 1), decay)])
        grad_norms.append(1 / math.sqrt(norm_sq))  # a normalised layer's gradient: ∝ 1/‖θ‖
        if s % 10 == 0:
            norm = math.sqrt(norm_sq)
            records.append({"step": s, "lr/normalized": cfg.lr * m(s), "group/normalized/weight_norm": norm,
                            "group/normalized/norm_ratio": norm})  # fmt: skip
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    rise = {"group/normalized/grad_norm": tail_rise(grad_norms)}  # as train.py stores it: every step
    (directory / "final.json").write_text(json.dumps({"status": "finished", "tail_rise": rise}))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records[-1]["group/normalized/norm_ratio"]


@pytest.mark.parametrize("method", ["adamw", "adamc"])
def test_a_run_made_by_the_recurrence_is_forecast_exactly(tmp_path, method):
    end = _run_made_by_the_recurrence(tmp_path / "results" / "run", method)
    summary = run_forecast_accuracy(tmp_path / "results", tmp_path / "out", at=0.2, verbose=False)
    (case,) = summary["cases"]
    assert case["measured"] == pytest.approx(end) and case["method"] == method
    assert abs(case["norms_error"]) < 1e-9  # the wrong λ_t (AdamC's uncorrected) or lr offset would miss
    (row,) = summary["table"]
    assert row["forecast"] == 1 and row["median_abs_error"] < 1e-9
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["at"] == 0.2


def test_runs_it_cannot_forecast_are_left_out(tmp_path):
    _run_made_by_the_recurrence(tmp_path / "results" / "held", "adamwn")  # norm-controlled: its target
    _run_made_by_the_recurrence(tmp_path / "results" / "cut", "adamw")
    (tmp_path / "results" / "cut" / "final.json").write_text(json.dumps({"status": "diverged"}))
    assert run_forecast_accuracy(tmp_path / "results", tmp_path / "out", verbose=False)["cases"] == []
    with pytest.raises(ValueError, match="at must be in"):
        run_forecast_accuracy(tmp_path / "results", tmp_path / "out", at=1.5)


def test_a_row_without_any_forecast_is_tabled_as_such():
    from normctl_lab.forecast_accuracy import accuracy_table, table

    rows = accuracy_table([{"method": "adamw", "task": "gpt", "group": "g", "norms": None, "norms_error": None}])
    assert rows[0]["forecast"] == 0
    stored = json.loads(json.dumps({"at": 0.1, "table": rows}).replace("NaN", "null"))  # as summary.json holds it
    assert "| adamw | GPT | g | norms | 1 (0) | — | — | — |" in table(stored)


@pytest.mark.parametrize("method", ["adamw", "adamc"])
def test_the_end_of_run_rise_is_forecast_along_the_norm_path(tmp_path, method):
    """On a run made by the recurrence whose gradient scales as 1/‖θ‖, the rise of ‖g‖/‖θ‖ forecast
    at 20 % is the measured one (up to the kept records' window means of the norm); the check's
    steady state is sqrt(γ_mid/γ_late) for AdamW (its 400 steps are 4 time scales 1/(2λγ)), 1 for AdamC."""
    _run_made_by_the_recurrence(tmp_path / "results" / "run", method)
    summary = run_forecast_accuracy(tmp_path / "results", tmp_path / "out", at=0.2, verbose=False)
    (case,) = summary["cases"]
    assert case["ratio_rise"] > 1.1  # the norm path rises at the end for both (AdamC's less)
    assert abs(case["ratio_rise_forecast_error"]) < 0.01
    cfg = with_overrides(RunConfig(), [f"method={method}", "steps=400", "warmup=20", "lr=0.01", "weight_decay=0.5"])
    expected = math.sqrt(cfg.lr_multiplier(200) / cfg.lr_multiplier(380)) if method == "adamw" else 1.0
    assert case["ratio_rise_prior"] == pytest.approx(expected)
    (row,) = summary["rise_table"]
    assert row["runs"] == 1 and row["forecast_median_abs_error"] < 0.01


def test_the_steady_state_predicts_no_rise_in_a_run_shorter_than_its_time_scale():
    assert steady_state_rise(1.0, 0.25, steps=1000, time_scale=500) == pytest.approx(2.0)
    assert steady_state_rise(1.0, 0.25, steps=400, time_scale=500) is None
    assert steady_state_rise(1.0, 0.0, steps=1000, time_scale=500) is None  # the lr is 0: no ratio
    assert steady_state_rise(1.0, 0.25, steps=1000, time_scale=None) is None  # nothing decays
