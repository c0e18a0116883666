"""NormMonitor: values equal direct torch computations, read-only, SPEC §2 closed form."""

import math

import pytest
import torch
from normctl_lab.models import GPT, GPTConfig
from torch import nn

import normctl
from normctl import SGDC, AdamC, AdamWN, param_groups
from normctl.monitor import MemorySink, NormMonitor, predict


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=16))


def train(model, opt, monitor=None, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 256, (4, 16), generator=g)
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor:
            monitor.observe(loss=loss)


def test_values_equal_direct_torch_computations():
    model = tiny_gpt()
    opt = AdamC(param_groups(model, weight_decay=0.1), lr=1e-2)
    sink = MemorySink()
    monitor = NormMonitor(model, opt, every=3, sinks=[sink])
    initial = {n: p.detach().norm().item() for n, p in model.named_parameters()}
    train(model, opt, monitor, steps=2)  # steps 0, 1: step 0 measured, record at step 1

    train(model, opt, monitor, steps=1, seed=99)  # step index 2: not measured
    # Step index 3 is measured: snapshot before it by hand, compare after.
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(7))
    _, loss = model(x, x)
    opt.zero_grad()
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    record = monitor.observe(loss=loss)
    assert record["step"] == 4 and record["loss"] == pytest.approx(loss.item())
    assert [r["step"] for r in sink.records] == [1, 4]

    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    for name, p in model.named_parameters():
        t = f"tensor/{name}/"
        w = p.detach()
        assert record[t + "weight_norm"] == pytest.approx(w.norm().item(), rel=1e-6)
        assert record[t + "weight_linf"] == pytest.approx(w.abs().max().item(), rel=1e-6)
        if initial[name] > 0:
            assert record[t + "norm_ratio"] == pytest.approx(w.norm().item() / initial[name], rel=1e-6)
        else:  # zero-initialised biases have no ratio
            assert record[t + "norm_ratio"] is None
        assert record[t + "weight_min"] == pytest.approx(w.min().item())
        assert record[t + "weight_max"] == pytest.approx(w.max().item())
        assert record[t + "weight_mean"] == pytest.approx(w.mean().item(), rel=1e-5, abs=1e-9)
        assert record[t + "grad_norm"] == pytest.approx(grads[name].norm().item(), rel=1e-6)
        assert record[t + "grad_weight_ratio"] == pytest.approx(grads[name].norm().item() / w.norm().item(), rel=1e-6)
        assert record[t + "update_weight_ratio"] == pytest.approx(
            (w - before[name]).norm().item() / before[name].norm().item(), rel=1e-5
        )
        state = opt.state[p]
        a = (state["exp_avg_sq"] / (1 - beta2 ** state["step"].item())).sqrt() + eps
        expected = ((grads[name] ** 2 / a).sum().sqrt() / (w**2 * a).sum().sqrt()).item()
        assert record[t + "adam_grad_weight_ratio"] == pytest.approx(expected, rel=1e-5)
    attn = [p for n, p in model.named_parameters() if n.startswith("transformer.h.0.attn.c_attn")]
    assert record["layer/transformer.h.0.attn.c_attn/weight_norm"] == pytest.approx(
        math.sqrt(sum(p.detach().norm().item() ** 2 for p in attn)), rel=1e-6
    )
    all_grads = torch.cat([g.flatten() for g in grads.values()])
    assert record["global/grad_norm"] == pytest.approx(all_grads.norm().item(), rel=1e-5)
    assert record["group/normalized/pred_ratio"] == pytest.approx(math.sqrt(2 * 0.1 / 1e-2))


def test_monitor_is_read_only():
    runs = []
    for with_monitor in (False, True):
        model = tiny_gpt()
        opt = AdamWN(param_groups(model), lr=1e-2, target=1.3, rate=0.1)
        monitor = NormMonitor(model, opt, every=1, sinks=[MemorySink()]) if with_monitor else None
        train(model, opt, monitor, steps=5)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        runs.append(([p.detach().clone() for p in model.parameters()], groups))
    (p0, g0), (p1, g1) = runs
    assert all(torch.equal(a, b) for a, b in zip(p0, p1)) and g0 == g1


def test_adamwn_target_and_deviation():
    model = tiny_gpt()
    opt = AdamWN(param_groups(model), lr=1e-3, target=1.5, rate=1.0, control_at="post_step")
    sink = MemorySink()
    monitor = NormMonitor(model, opt, every=1, sinks=[sink])
    train(model, opt, monitor, steps=2)
    record = sink.records[-1]
    name = "transformer.h.0.mlp.c_fc.weight"
    init = opt.state[dict(model.named_parameters())[name]]["init_norm"].item()
    assert record[f"tensor/{name}/target_norm"] == pytest.approx(1.5 * init)
    assert record[f"tensor/{name}/norm_deviation"] == pytest.approx(0.0, abs=1e-5)


def test_predictions_for_every_optimizer_family():
    w = [nn.Parameter(torch.ones(2, 2))]
    sgd = torch.optim.SGD(w, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert predict(sgd, sgd.param_groups[0]).ratio == pytest.approx(math.sqrt(2 * 1e-4 * 0.1 / 0.1))
    adamw = torch.optim.AdamW(w, lr=1e-3, weight_decay=0.1)
    pred = predict(adamw, adamw.param_groups[0])
    assert pred.ratio == pytest.approx(math.sqrt(2 * 0.1 / 1e-3))
    assert pred.linf == pytest.approx(math.sqrt(1e-3 / 0.2))
    assert predict(torch.optim.Adam(w, weight_decay=0.1), torch.optim.Adam(w).param_groups[0]).family is None
    adamc = AdamC(w, lr=1e-3, weight_decay=0.1, normalized=True)
    adamc.param_groups[0]["lr"] = 1e-4  # late in the schedule: the corrected steady state holds
    assert predict(adamc, adamc.param_groups[0]).ratio == pytest.approx(math.sqrt(2 * 0.1 / 1e-3))
    sgdc = SGDC(w, lr=0.1, weight_decay=1e-4, normalized=True, decoupled_weight_decay=True, momentum=0.5)
    sgdc.param_groups[0]["lr"] = 0.01
    assert predict(sgdc, sgdc.param_groups[0]).ratio == pytest.approx(0.5 * math.sqrt(2 * 1e-4 / 0.1))


def test_sgd_steady_state_prediction_holds_for_a_normalised_layer():
    """SPEC §2 closed form: Linear → LayerNorm, SGD at constant lr, ‖g‖/‖θ‖ → sqrt(2λ/γ)."""
    torch.manual_seed(0)
    lr, wd = 0.1, 5e-3  # equilibrium time 1/(2λγ) = 1000 steps
    model = nn.Sequential(nn.Linear(32, 64, bias=False), nn.LayerNorm(64, elementwise_affine=False))
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    sink = MemorySink()
    monitor = NormMonitor(model, opt, every=1, sinks=[sink], value_ranges=False)
    readout = torch.randn(64, 1)
    for _ in range(3000):
        x, y = torch.randn(128, 32), torch.randn(128, 1)
        loss = ((model(x) @ readout - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.observe(loss)
    _, measured = sink.series("tensor/0.weight/grad_weight_ratio")
    _, predicted = sink.series("tensor/0.weight/pred_ratio")
    settled = sum(measured[-500:]) / 500
    assert predicted[-1] == pytest.approx(math.sqrt(2 * wd / lr))
    assert settled == pytest.approx(predicted[-1], rel=0.10)


def test_unobserved_records_are_flushed_and_every_is_validated():
    model = tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = MemorySink()
    monitor = NormMonitor(model, opt, every=2, sinks=[sink])
    train(model, opt, None, steps=5)  # never calls observe()
    monitor.close()
    assert [r["step"] for r in sink.records] == [1, 3, 5] and "loss" not in sink.records[0]
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        NormMonitor(model, opt, every=0)


def test_monitor_is_exported_at_the_top_level():
    assert normctl.NormMonitor is NormMonitor and "NormMonitor" in normctl.__all__
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = normctl.monitor.MemorySink()
    with normctl.NormMonitor(model, optimizer, every=1, sinks=[sink]) as monitor:
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        monitor.observe(loss=1.0)
    assert sink.records[0]["step"] == 1 and sink.records[0]["loss"] == 1.0


def test_captured_gradients_are_the_norms_before_clipping():
    """The order a framework steps in: backward, capture, clip, step (or a closure whose
    backward runs inside step, after the monitor's hook)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = MemorySink()
    monitor = NormMonitor(model, opt, every=1, sinks=[sink])
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    pre_clip = []

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        monitor.capture_gradients()
        pre_clip.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)))
        return loss

    for _ in range(3):
        opt.step(closure)
        monitor.observe()
    for record, norm in zip(sink.records, pre_clip):
        assert record["global/grad_norm"] == pytest.approx(norm, rel=1e-5) and norm > 0.1
        assert record["global/clipped_grad_norm"] == pytest.approx(0.01, rel=1e-4)
    plain = NormMonitor(model, opt, every=1)  # without a capture: no clipped norm in the record
    opt.step(closure)
    assert "global/clipped_grad_norm" not in plain.observe()


def test_a_promised_capture_that_never_comes_falls_back_to_the_steps_gradients():
    """An integration that captures sets ``gradients_captured`` so the pre-step hook skips a
    gradient pass it would throw away; if no capture comes, the record still has the norms of
    the gradients the step used."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = NormMonitor(model, opt, every=1)
    monitor.gradients_captured = True
    nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 3)).backward()
    grads = [p.grad.norm() for p in model.parameters()]
    opt.step()
    record = monitor.observe()
    assert record["global/grad_norm"] == pytest.approx(float(torch.stack(grads).norm()), rel=1e-6)
