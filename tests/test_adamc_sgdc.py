"""AdamC and SGDC: equal to torch at γ_t = γ_max, the corrected factor under a schedule."""

import warnings

import pytest
import torch
from helpers import assert_same, cosine, make_params, run, warmup_cosine

from normctl import SGDC, AdamC, schedules
from normctl.optim import peak_lr


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_adamc_at_constant_lr_is_torch_adamw(foreach, normalized):
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=foreach))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, _ = run(lambda p: AdamC(p, lr=1e-2, weight_decay=0.1, normalized=normalized, foreach=foreach))
    assert_same(ref, got)


def test_adamc_non_normalized_groups_are_adamw_under_a_schedule():
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), scheduler=cosine())
    with pytest.warns(UserWarning, match="no param group has normalized=True"):
        got, _ = run(lambda p: AdamC(p, lr=1e-2, weight_decay=0.1), scheduler=cosine())
    assert_same(ref, got)


def assert_zero_grad_steps_multiply_by(opt, steps, warmup, factor, rtol):
    """Under warm-up + cosine, with g = 0, each step multiplies θ by exactly ``factor(γ_t)``."""
    sched = warmup_cosine(steps, warmup=warmup)(opt)
    param = opt.param_groups[0]["params"][0]
    for _ in range(steps):
        gamma = opt.param_groups[0]["lr"]
        before = param.detach().clone()
        param.grad = torch.zeros_like(param)
        opt.step()
        sched.step()
        torch.testing.assert_close(param.detach(), before * factor(gamma), rtol=rtol, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_adamc_decay_factor_is_one_minus_lr_squared_over_max_lr_times_wd(foreach):
    """g = 0 leaves Adam's step at 0, so each step multiplies θ by exactly 1 − γ_t²/γ_max·λ."""
    lr, wd = 0.5, 0.3
    opt = AdamC(make_params(shapes=[(4, 4)]), lr=lr, weight_decay=wd, normalized=True, foreach=foreach)
    assert_zero_grad_steps_multiply_by(opt, 60, 10, lambda gamma: 1 - gamma**2 / lr * wd, 1e-14)
    assert peak_lr(opt.param_groups[0]) == lr


def test_max_lr_resolution_explicit_then_scheduler_then_construction():
    w = [torch.zeros(2, requires_grad=True)]
    assert peak_lr(AdamC(w, lr=0.1, max_lr=0.4, normalized=True).param_groups[0]) == 0.4
    opt = AdamC(w, lr=0.1, normalized=True)
    assert peak_lr(opt.param_groups[0]) == 0.1  # construction lr
    opt.param_groups[0]["lr"] = 0.05  # a manual change does not move γ_max
    assert peak_lr(opt.param_groups[0]) == 0.1
    opt = AdamC(w, lr=0.2, normalized=True)
    torch.optim.lr_scheduler.LambdaLR(opt, schedules.cosine(1.0, 0.0, 100, warmup=10))
    assert opt.param_groups[0]["lr"] == 0.0 and peak_lr(opt.param_groups[0]) == 0.2
    opt = AdamC(w, lr=0.2, normalized=True)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.8, total_steps=100)
    assert peak_lr(opt.param_groups[0]) == 0.8


def test_lr_above_max_lr_warns():
    w = torch.ones(3, requires_grad=True)
    opt = AdamC([w], lr=0.1, max_lr=0.05, normalized=True)
    w.grad = torch.ones(3)
    with pytest.warns(UserWarning, match="exceeds max_lr"):
        opt.step()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.0, True), (0.8, 0.3, False)]
)
@pytest.mark.parametrize("maximize", [False, True])
def test_sgdc_at_constant_lr_is_torch_sgd(foreach, momentum, dampening, nesterov, maximize):
    kw = dict(
        lr=1e-2,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=1e-2,
        maximize=maximize,
        foreach=foreach,
    )
    ref, _ = run(lambda p: torch.optim.SGD(p, **kw))
    got, _ = run(lambda p: SGDC(p, normalized=True, **kw))
    assert_same(ref, got)


def test_sgdc_non_normalized_groups_are_torch_sgd_under_a_schedule():
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False)
    ref, _ = run(lambda p: torch.optim.SGD(p, **kw), scheduler=cosine())
    with pytest.warns(UserWarning, match="no param group has normalized=True"):
        got, _ = run(lambda p: SGDC([{"params": p, "normalized": False}], **kw), scheduler=cosine())
    assert_same(ref, got)


@pytest.mark.parametrize("decoupled", [False, True])
def test_sgdc_corrected_decay_closed_form_without_momentum(decoupled):
    """Without momentum both forms give θ_t = θ_{t−1}·(1 − γ_t·λ·γ_t/γ_max) when g = 0."""
    lr, wd = 0.5, 0.2
    opt = SGDC(make_params(shapes=[(3, 5)]), lr=lr, weight_decay=wd, normalized=True, decoupled_weight_decay=decoupled)
    assert_zero_grad_steps_multiply_by(opt, 40, 5, lambda gamma: 1 - gamma * wd * gamma / lr, 1e-13)


def test_sgdc_decoupled_decay_is_not_amplified_by_momentum():
    """Decoupled: θ ← θ − γλθ − γ·b; coupled: the decay enters b and is amplified by 1/(1−μ)."""

    def final(decoupled):
        params = make_params(shapes=[(4,)])
        opt = SGDC(params, lr=0.1, momentum=0.9, weight_decay=0.5, normalized=True, decoupled_weight_decay=decoupled)
        for _ in range(30):
            params[0].grad = torch.zeros(4, dtype=torch.float64)
            opt.step()
        return params[0].detach(), make_params(shapes=[(4,)])[0].detach()

    theta, theta0 = final(True)
    torch.testing.assert_close(theta, theta0 * (1 - 0.1 * 0.5) ** 30, rtol=1e-12, atol=0)
    theta_coupled, _ = final(False)
    assert theta_coupled.norm() < theta.norm()


def test_nesterov_validation():
    with pytest.raises(ValueError, match="nesterov"):
        SGDC([torch.zeros(1, requires_grad=True)], lr=0.1, nesterov=True, normalized=True)


AFFECTED_TORCH = torch.__version__ < (2, 14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sgdc_on_low_precision_cpu_weights_steps_them_all(dtype):
    """torch < 2.14's CPU fused SGD skips most of a bfloat16/float16 update (pytorch#191763): SGDC's
    default path must still move every weight as its per-tensor reference does."""
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, normalized=True)

    def trained(**extra):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(1000).to(dtype))
        opt = SGDC([p], **kw, **extra)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            p.grad = torch.randn(1000, generator=g).to(dtype)
            opt.step()
        return p.detach().float()

    reference = trained(foreach=False)
    assert (trained() - reference).abs().max() < 0.05  # rounding apart; the defect is off by ~1
    if AFFECTED_TORCH:
        with pytest.raises(RuntimeError, match="191763"):
            trained(fused=True)
