"""torch's Muon with decoupled decay: its steady-state norm, and the monitor's forecast of it."""

from __future__ import annotations

import math

import pytest
import torch

from normctl import NormMonitor, rules

Muon = getattr(torch.optim, "Muon", None)
pytestmark = pytest.mark.skipif(Muon is None, reason="torch.optim.Muon needs torch >= 2.9")

LR, DECAY = 0.05, 0.4  # decay's time scale 1/(2γλ) = 25 steps


def _noise_run(momentum: float, steps: int = 600, monitor_every: int | None = None):
    """Muon on one 32 × 16 matrix with independent N(0, 1) gradients: per step ‖u‖ (the update per
    unit of lr without the decay), cos(θ, −u) and ‖θ‖."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(32, 16) * 0.02)
    opt = Muon([weight], lr=LR, weight_decay=DECAY, momentum=momentum)
    monitor = NormMonitor(torch.nn.ParameterList([weight]), opt, every=monitor_every) if monitor_every else None
    sizes, cosines, norms = [], [], []
    for _ in range(steps):
        weight.grad = torch.randn_like(weight)
        before = weight.detach().clone()
        opt.step()
        if monitor is not None:
            monitor.observe()
        step = weight.detach() - (1 - LR * DECAY) * before
        sizes.append(float(step.norm()) / LR)
        cosines.append(float((before * step).sum() / (before.norm() * step.norm())))
        norms.append(float(weight.detach().norm()))
    return sizes, cosines, norms, monitor


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("momentum", [0.0, 0.95])
def test_the_steady_norm_with_the_measured_cosine_is_muons(momentum):
    sizes, cosines, norms, _ = _noise_run(momentum)
    settled = slice(-300, None)  # 12 time scales in
    update_norm = math.sqrt(_mean([u * u for u in sizes[settled]]))
    predicted = rules.decayed_steady_norm(update_norm, LR, DECAY, _mean(cosines[settled]))
    assert predicted == pytest.approx(_mean(norms[settled]), rel=0.03)
    orthogonal = rules.decayed_steady_norm(update_norm, LR, DECAY)  # ⟨θ, u⟩ = 0: AdamW's closed form
    assert orthogonal == pytest.approx(rules.adamw_equilibrium_norm(update_norm**2, LR, DECAY), rel=1e-12)
    if momentum == 0:  # independent updates: orthogonal on average, the closed form holds
        assert abs(_mean(cosines[settled])) < 0.02
        assert orthogonal == pytest.approx(_mean(norms[settled]), rel=0.03)
    else:  # momentum aligns successive updates with the weight they built: far above the closed form
        assert _mean(cosines[settled]) > 0.05 and _mean(norms[settled]) > 2 * orthogonal


def test_the_monitor_forecasts_muons_norm_from_its_first_steps():
    _, _, _, monitor = _noise_run(0.95, steps=150, monitor_every=5)
    record = monitor.group_records[-1]
    assert record["group/0/weight_decay"] == DECAY and record["group/0/update_size"] > 0
    (forecast,) = monitor.forecast(600)  # the constant lr held: where the long run settles
    _, _, long_norms, _ = _noise_run(0.95)
    torch.manual_seed(0)
    initial = float((torch.randn(32, 16) * 0.02).norm())  # the weight _noise_run starts from
    assert forecast.cosine > 0.05
    assert forecast.norm_ratio_end * initial == pytest.approx(_mean(long_norms[-300:]), rel=0.1)
