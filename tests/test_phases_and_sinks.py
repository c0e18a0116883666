"""Phase detection on constructed curves; sinks write what they claim."""

import csv
import json
import math

import pytest
import torch

from normctl.monitor import (
    CsvSink,
    JsonlSink,
    MemorySink,
    TensorBoardSink,
    detect_phases,
    read_jsonl,
    tail_blowup_score,
    tail_rise,
)
from normctl.monitor.phases import smooth


def schedule_curves(n=400, blowup=True):
    """Ratio approaching sqrt(2λ/γ_t) from below, γ_t cosine to ~0 (blows up) or constant."""
    lr = [0.5 * (1 + math.cos(math.pi * t / n)) + 0.02 if blowup else 1.0 for t in range(n)]
    predicted = [math.sqrt(2 * 0.01 / g) for g in lr]
    measured = [p * (1 - math.exp(-t / 40)) for t, p in enumerate(predicted)]
    return measured, predicted


def test_phases_on_a_decaying_schedule():
    measured, predicted = schedule_curves()
    phases = detect_phases(measured, predicted, tolerance=0.1)
    assert 60 < phases.steady_start < 140  # 1 − e^{−t/40} within 10 % after ≈ 92 steps
    assert phases.tail_start is not None and phases.tail_start > 200
    assert [phases.label(i) for i in (0, phases.steady_start, 399)] == ["burn-in", "steady", "tail"]
    assert tail_blowup_score(measured) > 3


def test_no_tail_at_a_constant_schedule_and_score_near_one():
    measured, predicted = schedule_curves(blowup=False)
    phases = detect_phases(measured, predicted, tolerance=0.1)
    assert phases.tail_start is None and phases.label(399) == "steady"
    assert tail_blowup_score(measured) == pytest.approx(1.0, abs=0.01)


def test_phase_edge_cases():
    assert detect_phases([], []).length == 0
    never = detect_phases([1.0] * 10, [5.0] * 10)
    assert never.steady_start is None and never.label(9) == "burn-in"
    with pytest.raises(ValueError, match="same length"):
        detect_phases([1.0], [1.0, 2.0])
    assert math.isnan(tail_blowup_score([1.0, 2.0]))
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_jsonl_csv_memory_sinks_write_what_they_claim(tmp_path):
    records = [
        {"step": 1, "loss": 2.5, "tensor/w/weight_norm": 1.0, "x": None},
        {"step": 2, "loss": float("nan"), "tensor/w/weight_norm": 1.5, "x": 3.0},
    ]
    sinks = [JsonlSink(tmp_path), CsvSink(tmp_path), MemorySink()]
    for r in records:
        for s in sinks:
            s.write(r)
    for s in sinks:
        s.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [records[0], {**records[1], "loss": None}]
    assert "NaN" not in lines[1]  # strict JSON
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["tensor/w/weight_norm"] == "1.5" and rows[0]["step"] == "1"
    assert sinks[2].series("x") == ([2], [3.0])
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 3, "lo')  # a run killed mid-write
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2


def test_tensorboard_sink_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path)
    for step in (1, 2):
        sink.write({"step": step, "loss": 1.0 / step, "tensor/w/weight_norm": None})
    sink.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([1.0, 0.5])


def test_packed_run_directories_read_like_plain_ones(tmp_path):
    import gzip
    import json

    from normctl.report.runs import load_run

    records = [{"step": s, "loss": 1.0 / s, "global/grad_norm": 0.5} for s in range(1, 6)]
    (tmp_path / "config.json").write_text(json.dumps({"method": "adamw", "seed": 3}))
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "metrics.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    run = load_run(tmp_path)
    assert run.records == records and (run.label, run.seed) == ("adamw", 3)


def test_tail_rise_is_a_ratio_of_window_means():
    values = [1.0] * 40 + [2.0] * 20 + [1.0] * 30 + [3.0] * 10  # 100 points
    assert tail_rise(values) == pytest.approx(3.0 / 2.0)  # the last 10 over points 40-59
    flat = [1.0 + 0.1 * ((-1) ** i) for i in range(1000)]  # noise around a constant: no rise
    assert tail_rise(flat) == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(tail_rise([1.0] * 5))


def test_tail_rise_moves_little_with_noise_where_the_blowup_score_does_not():
    g = torch.Generator().manual_seed(0)
    noisy = (1 + 0.3 * torch.randn(2000, generator=g)).abs().tolist()  # a constant-lr run: no rise
    assert tail_rise(noisy) == pytest.approx(1.0, abs=0.05)
    assert tail_blowup_score(noisy) > tail_rise(noisy)  # a smoothed point over a minimum: above 1 from noise


def test_tracker_scalars_are_the_headline_of_a_record():
    from normctl.monitor import select_scalars

    record = {
        "step": 3,
        "loss": 2.0,
        "lr/decay": 1e-3,
        "tensor/w/grad_norm": 1.0,
        "layer/net/weight_norm": 2.0,
        "group/decay/weight_norm": 3.0,
        "group/decay/pred_ratio": None,
        "group/decay/weight_linf": 4.0,
        "global/grad_norm": 5.0,
        "global/norm_ratio": math.inf,
    }
    assert select_scalars(record) == {"group/decay/weight_norm": 3.0, "global/grad_norm": 5.0}
    assert select_scalars(record, scopes=None, metrics=["grad_norm"], prefix="n/") == {
        "n/tensor/w/grad_norm": 1.0,
        "n/global/grad_norm": 5.0,
    }
    everything = select_scalars(record, scopes=None, metrics=None)
    assert set(everything) == {k for k, v in record.items() if "/" in k and k[:3] != "lr/" and v and v < math.inf}


def test_tensorboard_sink_writes_the_headline_unless_told_otherwise(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = {"step": 1, "loss": 1.0, "tensor/w/weight_norm": 2.0, "global/weight_norm": 3.0}
    for directory, kwargs in (("headline", {}), ("all", {"scopes": None, "metrics": None})):
        sink = TensorBoardSink(tmp_path / directory, **kwargs)
        sink.write(record)
        sink.close()
    tags = {}
    for directory in ("headline", "all"):
        events = EventAccumulator(str(tmp_path / directory))
        events.Reload()
        tags[directory] = set(events.Tags()["scalars"])
    assert tags["headline"] == {"loss", "global/weight_norm"}
    assert tags["all"] == {"loss", "global/weight_norm", "tensor/w/weight_norm"}


def test_jsonl_sink_drops_the_records_a_resumed_run_writes_again(tmp_path):
    sink = JsonlSink(tmp_path)
    for step in (1, 3, 5, 7):
        sink.write({"step": step, "loss": float(step)})
    sink.close()
    resumed = JsonlSink(tmp_path, resume=True)
    with pytest.warns(UserWarning, match="2 records after step 4 dropped"):
        resumed.drop_after(4)
    resumed.write({"step": 5, "loss": 50.0})
    resumed.drop_after(5)  # nothing after it: nothing dropped, no warning
    resumed.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 1.0},
        {"step": 3, "loss": 3.0},
        {"step": 5, "loss": 50.0},
    ]
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_sink_widens_for_keys_that_appear_later_and_never_stops_the_run(tmp_path):
    from normctl import AdamWN, AutoTarget, param_groups
    from normctl.monitor import NormMonitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    # the automatic target sets itself at step 6: target_norm / norm_deviation appear in the records then
    optimizer = AdamWN(param_groups(model), lr=1e-2, target=AutoTarget(steps=4, interval=2))
    sink = CsvSink(tmp_path)
    monitor = NormMonitor(model, optimizer, every=2, sinks=[sink])
    for step in range(12):
        loss = model(torch.randn(8, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.observe(loss=None if step == 0 else loss)  # the first record has no loss
    monitor.close()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["loss"] == "" and rows[-1]["loss"] != ""
    late = [k for k in rows[-1] if k.endswith("target_norm")]
    assert late and rows[0][late[0]] == "" and rows[-1][late[0]] != ""
    # what a user wrote is never overwritten: a second sink on the same directory is refused
    with pytest.raises(FileExistsError, match="already holds records"):
        CsvSink(tmp_path)
    resumed = CsvSink(tmp_path, resume=True)
    resumed.write({"step": 99, "loss": 1.0})
    resumed.close()
    with open(tmp_path / "metrics.csv") as f:
        assert list(csv.DictReader(f))[-1]["step"] == "99"
