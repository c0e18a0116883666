"""NormMonitor.forecast and ``normctl doctor RUN_DIR``: the end-of-run norm from the updates seen
so far (the ODE of target="auto"), and the verdict on a finished run."""

from __future__ import annotations

import math

import pytest
import torch

import normctl
from normctl import NormMonitor, rules, schedules
from normctl.cli import main
from normctl.monitor.forecast import forecast_group, from_records
from normctl.monitor.sinks import JsonlSink
from normctl.report.runs import load_run
from normctl.verdict import diagnose


def _records(steps, **per_step):
    """Group 'g' records at ``steps``; each keyword a function of the step (or a constant)."""
    out = []
    for s in steps:
        record = {"step": s}
        for key, value in per_step.items():
            name = "lr/g" if key == "lr" else f"group/g/{key}"
            record[name] = value(s) if callable(value) else value
        out.append(record)
    return out


def test_the_forecast_at_a_constant_lr_is_the_closed_form_of_adamws_norm():
    # ‖θ_N‖² = f^{2N}·‖θ‖² + γ²‖u‖²·(1 − f^{2N})/(1 − f²), f = 1 − γλ, for N steps with ⟨θ, u⟩ = 0
    lr, decay, u, norm, n = 0.01, 0.1, 5.0, 2.0, 900
    records = _records(
        range(10, 101, 10),
        lr=lr,
        weight_decay=decay,
        update_size=u,
        update_cosine=0.0,
        weight_norm=norm,
        norm_ratio=1.0,
    )
    (forecast,) = from_records(records, total_steps=100 + n, source="updates")
    f = 1 - lr * decay
    expected = math.sqrt(f ** (2 * n) * norm**2 + (lr * u) ** 2 * (1 - f ** (2 * n)) / (1 - f * f))
    assert forecast.norm_ratio_end == pytest.approx(expected / norm, rel=1e-12)
    assert forecast.time_scale == pytest.approx(1 / (2 * lr * decay))
    adamw = math.sqrt(rules.adamw_norm_sq_after(norm**2, u * u, [lr] * n, decay))  # the rule target="auto" uses
    assert forecast.norm_ratio_end == pytest.approx(adamw / norm, rel=1e-12)

    # the end-of-run rise of ‖g‖/‖θ‖ ∝ 1/‖θ‖² along the same closed form: mean over the last 10 % of
    # the run's 1 000 steps over the mean at 40-60 % (step s is k = s − 100 steps after the forecast)
    def inverse_norm_sq(s: int) -> float:
        k = s - 100
        return 1 / (f ** (2 * k) * norm**2 + (lr * u) ** 2 * (1 - f ** (2 * k)) / (1 - f * f))

    late = sum(inverse_norm_sq(s) for s in range(901, 1001)) / 100
    middle = sum(inverse_norm_sq(s) for s in range(401, 601)) / 200
    assert forecast.ratio_rise == pytest.approx(late / middle, rel=1e-9)
    assert f"{forecast.ratio_rise:.2f}× over the last 10 % against mid-run" in str(forecast)


def test_the_effective_update_is_the_inverse_of_the_recurrence_and_forecasts_from_norms_alone():
    # norms made by the recurrence itself, under a cosine lr and AdamC's scaled decay: the update
    # recovered from two of them is the one that made them, and the forecast is the norm reached
    lr = schedules.cosine(1.0, 0.0, 400, warmup=20)
    steps = [(0.01 * lr(t - 1), 0.1 * lr(t - 1)) for t in range(1, 401)]
    norms_sq = [4.0]
    for pair in steps:
        norms_sq.append(rules.decayed_norm_sq_after(norms_sq[-1], 9.0, [pair]))
    assert rules.update_sq_between(norms_sq[20], norms_sq[40], steps[20:40]) == pytest.approx(9.0, rel=1e-9)
    assert rules.update_sq_between(4.0, 1.0, [(0.01, 0.1)] * 10) < 0  # fell faster than decay: inward
    records = [
        {"step": s, "lr/g": steps[s - 1][0], "group/g/weight_decay": steps[s - 1][1],
         "group/g/weight_norm": math.sqrt(norms_sq[s]), "group/g/norm_ratio": math.sqrt(norms_sq[s] / 4.0)}
        for s in range(10, 401, 10)
    ]  # fmt: skip
    given = lambda label: (lambda t: steps[t - 1][0], lambda t: steps[t - 1][1])  # noqa: E731
    (forecast,) = from_records(records, at_step=40, total_steps=400, future=given)
    assert forecast.norm_ratio_end == pytest.approx(math.sqrt(norms_sq[400] / 4.0), rel=1e-9)
    shrinking = [{**r, "group/g/weight_norm": 2.0 / r["step"], "group/g/norm_ratio": 1.0 / r["step"]} for r in records]
    (inward,) = from_records(shrinking, at_step=40, total_steps=400, future=given)
    assert inward.norm_ratio_end is None and "not forecast" in str(inward) and "cos" not in str(inward)
    with pytest.raises(ValueError, match="source"):
        from_records(records, source="gradients")


def test_an_outward_update_grows_the_forecast_and_an_inward_one_gets_none():
    common = dict(at_step=100, total_steps=1000, norm=2.0, init_norm=2.0, update_sq=25.0, grad_ratio=0.1)
    constant = dict(lr_at=lambda s: 0.01, decay_at=lambda s: 0.1)
    orthogonal = forecast_group("g", cosine=0.0, **common, **constant)
    outward = forecast_group("g", cosine=0.2, **common, **constant)
    inward = forecast_group("g", cosine=-0.2, **common, **constant)
    assert outward.norm_ratio_end > orthogonal.norm_ratio_end
    # a scale-invariant layer's ‖g‖/‖θ‖ scales as 1/‖θ‖²
    assert orthogonal.grad_ratio_end == pytest.approx(0.1 / orthogonal.norm_ratio_end**2)
    assert inward.norm_ratio_end is None and inward.grad_ratio_end is None
    assert "not forecast" in str(inward) and "settle" in str(orthogonal)


def _linear_adamw(lr=0.1, weight_decay=0.5):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4, bias=False)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def _train(model, opt, monitor, steps, x):
    for _ in range(steps):
        model(x).square().mean().backward()
        opt.step()
        monitor.observe()
        opt.zero_grad()


def test_the_monitor_measures_adamws_update_without_its_decay():
    model, opt = _linear_adamw()
    monitor = NormMonitor(model, opt, every=1)
    before = model.weight.detach().clone()
    model(torch.randn(8, 6)).square().mean().backward()
    grad = model.weight.grad.clone()
    opt.step()
    record = monitor.observe()
    u = grad / (grad.abs() + 1e-8)  # Adam's first update m̂/(√v̂ + ε)
    assert record["group/0/update_size"] == pytest.approx(float(u.norm()), rel=1e-5)
    assert record["group/0/weight_decay"] == 0.5
    assert record["group/0/update_cosine"] == pytest.approx(
        float(-(before * u).sum() / (before.norm() * u.norm())), rel=1e-4
    )


def test_monitor_forecast_follows_the_schedule_and_survives_a_resume(tmp_path):
    torch.manual_seed(0)  # a layer followed by a normalisation: its updates do not pull it inward
    model = torch.nn.Sequential(torch.nn.Linear(6, 16, bias=False), torch.nn.LayerNorm(16, elementwise_affine=False))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.2)
    eta = schedules.cosine(1.0, 0.0, 200, warmup=5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, eta)
    monitor = NormMonitor(model, opt, every=5)
    target = torch.randn(8, 16)
    for _ in range(40):
        (model(torch.randn(8, 6)) - target).square().mean().backward()
        opt.step()
        monitor.observe()
        opt.zero_grad()
        scheduler.step()
    with pytest.raises(ValueError, match="total_steps"):
        monitor.forecast(10)
    (scheduled,) = monitor.forecast(200, eta)
    (held,) = monitor.forecast(200)  # the lr of the last measured step held to the end: its steady state
    assert scheduled.cosine >= 0 and scheduled.norm_ratio_end > 0 and held.norm_ratio_end > 0
    assert scheduled.norm_ratio_end != pytest.approx(held.norm_ratio_end, rel=0.01)
    torch.save(monitor.state_dict(), tmp_path / "monitor.pt")
    resumed = NormMonitor(model, opt, every=5)
    resumed.load_state_dict(torch.load(tmp_path / "monitor.pt", weights_only=True))
    assert resumed.forecast(200, eta) == monitor.forecast(200, eta)


def _write_run(path, *, corrected):
    """A run whose normalised group's ‖g‖/‖θ‖ doubles over the last 10 % as the lr goes to 0."""
    sink = JsonlSink(path, label="adamw", seed=0)
    total = 200
    for record in _records(
        range(1, total + 1),
        lr=lambda s: 0.01 * (1 + math.cos(math.pi * s / total)) / 2 + 1e-5,
        weight_decay=lambda s: 0.1 * ((1 + math.cos(math.pi * s / total)) / 2 if corrected else 1.0),
        grad_weight_ratio=lambda s: 0.1 * (2.0 if s > 0.9 * total else 1.0),
        update_size=5.0,
        update_cosine=0.1,
        weight_norm=lambda s: 2.0 - s / total,
        norm_ratio=lambda s: 1.0 - s / (2 * total),
    ):
        sink.write(record)
    sink.close()


def test_the_verdict_warns_of_the_end_of_run_rise_and_names_corrected_decay(tmp_path, capsys):
    _write_run(tmp_path / "fixed", corrected=False)
    _write_run(tmp_path / "corrected", corrected=True)
    fixed = diagnose(load_run(tmp_path / "fixed"))
    warnings = [f for f in fixed if f.severity == "warning"]
    assert len(warnings) == 1 and "rose 2.00×" in warnings[0].what and "AdamC" in warnings[0].fix
    assert any("forecast at step 20" in f.what for f in fixed)  # the forecast judged by the run's end
    assert any("steady state" in f.what for f in fixed)
    corrected = diagnose(load_run(tmp_path / "corrected"))
    assert not [f for f in corrected if f.severity == "warning"]
    assert any("under corrected decay" in f.what for f in corrected)
    assert main(["doctor", str(tmp_path / "fixed")]) == 0
    out = capsys.readouterr().out
    assert "== " in out and "[warning] g: ‖g‖/‖θ‖ rose" in out


def test_doctor_alone_still_reports_the_kernels(capsys):
    assert main(["doctor"]) == 0
    assert "AdamWN cpu float32 tensor" in capsys.readouterr().out


def test_the_verdict_of_a_real_monitored_run(tmp_path):
    """End to end: a monitored AdamW run written by JsonlSink, read back by the doctor."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(normctl.param_groups(model, weight_decay=0.5), lr=1e-2)
    monitor = NormMonitor(model, opt, every=2, sinks=[JsonlSink(tmp_path / "run", label="adamw", seed=0)])
    _train(model, opt, monitor, 60, torch.randn(16, 8))
    monitor.close()
    findings = diagnose(load_run(tmp_path / "run"))
    groups = {f.what.split(":")[0] for f in findings}
    assert {"normalized", "output"} <= groups  # the last Linear is the output layer: its own group
    assert all(f.severity in ("info", "warning") for f in findings)


def test_the_reports_first_section_is_the_verdict(tmp_path):
    from normctl.report import build_report

    _write_run(tmp_path / "fixed", corrected=False)
    page = build_report([tmp_path / "fixed"], tmp_path / "report.html").read_text()
    assert page.index("<h2>What decay did</h2>") < page.index("<h2>Summary by method</h2>")
    assert "[warning] g: ‖g‖/‖θ‖ rose 2.00×" in page


def test_a_long_runs_group_records_stay_in_bounds_keeping_the_last(monkeypatch):
    from normctl.monitor import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "KEPT_GROUP_RECORDS", 8)
    model, opt = _linear_adamw()
    monitor = NormMonitor(model, opt, every=1)
    _train(model, opt, monitor, 30, torch.randn(8, 6))
    steps = [r["step"] for r in monitor.group_records]
    assert len(steps) <= 8 and steps[-1] == 30 and steps == sorted(steps)
