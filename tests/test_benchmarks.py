"""The benchmark scripts run end to end (on tiny shapes; their timings are not checked here)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import step_speed  # noqa: E402


def test_step_speed_times_every_optimizer_against_its_paired_baseline(monkeypatch):
    monkeypatch.setattr(step_speed.gc, "collect", lambda: 0)  # 0.3 s a call with torch loaded
    shapes = [(8, 4), (4,), (3, 2, 2, 2), (6, 5)]  # the last: a hidden matrix for the Muon family
    out = step_speed.run_family(
        "tiny", shapes, torch.float32, repeats=2, rounds=2, device="cpu", labels=list(step_speed.MAKERS)
    )
    assert list(out["results"]) == list(step_speed.MAKERS)
    for label, r in out["results"].items():
        key = "ratio_to_" + step_speed.BASELINES[label][0].replace(" ", "_")
        # the ratio is the medians' ratio of the timings stored beside it, one more per round
        assert r[key] == pytest.approx(r["seconds"]["median"] / r["baseline_seconds"]["median"], rel=1e-12), label
        assert len(r["ratio_by_round"]) == 2 and all(q > 0 for q in r["ratio_by_round"]), label
        assert r["seconds"]["repeats"] == r["baseline_seconds"]["repeats"] == 4
    # Adam's two moments per element; SGD's momentum buffer
    assert out["results"]["AdamWN tensor"]["state_bytes"] >= 2 * 4 * sum(torch.Size(s).numel() for s in shapes)


def test_step_speed_times_only_the_optimizers_asked_for(monkeypatch):
    monkeypatch.setattr(step_speed.gc, "collect", lambda: 0)
    out = step_speed.run_family("tiny", [(8, 4)], torch.float32, 1, 1, "cpu", labels=["NormControl(Lion)"])
    (result,) = out["results"].values()
    assert list(out["results"]) == ["NormControl(Lion)"] and result["baseline"] == "Lion"
