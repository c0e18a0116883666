"""AdamWN: the special cases of Algorithm 1 line 13 and the closed forms of Eq. 3."""

import math

import pytest
import torch
from helpers import assert_same, cosine, make_params, one_group, run

from normctl import AdamWN, schedules


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_target_zero_lr_scaled_rate_is_torch_adamw_13a(foreach, dtype):
    ref, _ = run(
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=foreach), scheduler=cosine(), dtype=dtype
    )
    got, _ = run(
        lambda p: AdamWN(one_group(p), lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr", foreach=foreach),
        scheduler=cosine(),
        dtype=dtype,
    )
    assert_same(ref, got)  # bit for bit


@pytest.mark.parametrize("foreach", [False, True])
def test_target_zero_rate_lr_times_wd_at_constant_lr_is_torch_adamw(foreach):
    lr, wd = 3e-3, 0.05
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd, foreach=foreach))
    got, _ = run(lambda p: AdamWN(one_group(p), lr=lr, target=0.0, rate=lr * wd, foreach=foreach))
    assert_same(ref, got)


def original_adamw_reference(params, lr, wd, steps, multiplier, betas=(0.9, 0.999), eps=1e-8):
    """Loshchilov & Hutter's AdamW (line 13.b): θ ← θ − η_t·(α·m̂/(√v̂+ε) + λ·θ)."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    g = torch.Generator().manual_seed(1)
    for t in range(1, steps + 1):
        eta = multiplier(t - 1)
        for p, mi, vi in zip(params, m, v):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            mi.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
            vi.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
            m_hat, v_hat = mi / (1 - betas[0] ** t), vi / (1 - betas[1] ** t)
            p.sub_(eta * (lr * m_hat / (v_hat.sqrt() + eps) + wd * p))
    return params


@pytest.mark.parametrize("foreach", [False, True])
def test_target_zero_lr_ratio_rate_is_original_adamw_13b(foreach):
    steps, lr, wd = 100, 1e-2, 1e-3
    multiplier = schedules.cosine(1.0, 0.1, steps, warmup=10, warmup_start=0.1)
    ref = original_adamw_reference([p.detach().clone() for p in make_params()], lr, wd, steps, multiplier)
    got, opt = run(
        lambda p: AdamWN(one_group(p), lr=lr, target=0.0, rate=wd, rate_scaling="lr_ratio", foreach=foreach),
        scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, multiplier),
        steps=steps,
    )
    assert_same(ref, [p.detach() for p in got], exact=False, rtol=1e-12, atol=1e-12)
    assert all(g["max_lr"] is None and g["initial_lr"] == lr for g in opt.param_groups)


@pytest.mark.parametrize("scope", ["tensor", "group", "global"])
@pytest.mark.parametrize("foreach", [False, True])
def test_rate_one_after_step_lands_on_target_norm(scope, foreach):
    params = make_params(shapes=[(6, 5), (7,), (3, 3, 3)])
    init = [p.detach().norm().item() for p in params]
    init_all = math.sqrt(sum(n * n for n in init))
    opt = AdamWN(one_group(params), lr=0.1, target=1.7, rate=1.0, control_at="post_step", scope=scope, foreach=foreach)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
        if scope == "tensor":
            for p, n0 in zip(params, init):
                assert p.detach().norm().item() == pytest.approx(1.7 * n0, rel=1e-6)
        else:
            total = math.sqrt(sum(p.detach().norm().item() ** 2 for p in params))
            assert total == pytest.approx(1.7 * init_all, rel=1e-6)


@pytest.mark.parametrize("target", [0.5, 2.0])
def test_zero_gradient_norm_follows_closed_form(target):
    """With g = 0 Adam moves nothing, so Eq. 3 alone acts: ‖θ_t‖ − τ = (1 − k)^t (‖θ_0‖ − τ)."""
    k, steps = 0.05, 40
    params = make_params(shapes=[(8, 4)])
    n0 = params[0].detach().norm().item()
    opt = AdamWN(one_group(params), lr=1e-2, target=target, rate=k)
    for _ in range(steps):
        params[0].grad = torch.zeros_like(params[0])
        opt.step()
    expected = target * n0 + (1 - k) ** steps * (n0 - target * n0)
    assert params[0].detach().norm().item() == pytest.approx(expected, rel=1e-10)


def test_small_rate_converges_to_target_on_a_scale_invariant_problem():
    """A normalised layer's loss depends on θ/‖θ‖ only, so its gradient is orthogonal to θ and
    keeps inflating the norm; AdamWN with k = 1e-2 holds the norm at the target while solving
    the problem."""
    torch.manual_seed(0)
    theta = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    a = torch.randn(32, 16, dtype=torch.float64)
    n0 = theta.detach().norm().item()
    opt = AdamWN([theta], lr=1e-2, target=0.5, rate=1e-2)
    for _ in range(1000):
        loss = -torch.nn.functional.cosine_similarity(theta.flatten(), a.flatten(), dim=0)
        opt.zero_grad()
        loss.backward()
        theta.grad += 1e-3 * torch.randn_like(theta)
        opt.step()
    assert theta.detach().norm().item() == pytest.approx(0.5 * n0, rel=0.02)
    assert -loss.item() > 0.95


def test_weight_below_target_grows_above_target_shrinks():
    params = make_params(shapes=[(10, 10), (10, 10)])
    n0 = [p.detach().norm().item() for p in params]
    opt = AdamWN([{"params": [params[0]], "target": 2.0}, {"params": [params[1]], "target": 0.5}], lr=1e-3, rate=0.1)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert params[0].detach().norm().item() > n0[0]
    assert params[1].detach().norm().item() < n0[1]


def test_target_schedule_is_followed_step_by_step():
    params = make_params(shapes=[(6, 6)])
    n0 = params[0].detach().norm().item()
    target = schedules.linear_ramp(1.0, 2.0, 10)
    opt = AdamWN(one_group(params), lr=1e-2, target=target, rate=1.0, control_at="post_step")
    for t in range(15):
        params[0].grad = torch.randn_like(params[0])
        opt.step()
        assert params[0].detach().norm().item() == pytest.approx(target(t) * n0, rel=1e-9)
    assert opt.param_groups[0]["schedule_step"] == 15


def test_group_scope_scales_every_tensor_by_one_factor():
    params = make_params(shapes=[(5, 5), (9,)])
    before = [p.detach().clone() for p in params]
    opt = AdamWN(one_group(params), lr=1e-2, target=3.0, rate=0.3, scope="group")
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    ratios = [(p.detach() / b).flatten() for p, b in zip(params, before)]
    all_ratios = torch.cat(ratios)
    assert torch.allclose(all_ratios, all_ratios[0].expand_as(all_ratios), rtol=1e-12)
    assert opt.param_groups[0]["init_norm"] == pytest.approx(math.sqrt(sum(b.norm().item() ** 2 for b in before)))


def test_absolute_target_controls_zero_initialised_tensor():
    w = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    opt = AdamWN([w], lr=1e-2, target=2.0, relative_target=False, rate=1.0, control_at="post_step")
    w.grad = torch.ones_like(w)
    opt.step()
    assert w.detach().norm().item() == pytest.approx(2.0, rel=1e-12)


def test_control_off_group_is_adam_or_adamw():
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2), scheduler=cosine())
    got, opt = run(
        lambda p: AdamWN([{"params": p, "control": False, "weight_decay": 0.2}], lr=1e-2), scheduler=cosine()
    )
    assert_same(ref, got)
    assert "init_norm" not in opt.state[got[0]]
    ref, _ = run(lambda p: torch.optim.Adam(p, lr=1e-2))
    got, _ = run(lambda p: AdamWN([{"params": p}], lr=1e-2, control=False))
    assert_same(ref, got)


def test_zero_and_empty_tensors_never_produce_nan():
    params = [
        torch.zeros(0, 4, requires_grad=True),
        torch.tensor(2.0, requires_grad=True),
        torch.ones(3, requires_grad=True),
    ]
    opt = AdamWN(one_group(params), lr=1e-2, target=1.5, rate=0.5)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    # a weight that has become exactly 0 stays finite: there is no direction to rescale
    w = torch.ones(3, requires_grad=True)
    opt = AdamWN([w], lr=1e-2, target=1.0, rate=0.5)
    w.grad = torch.zeros(3)
    opt.step()
    with torch.no_grad():
        w.zero_()
    opt.step()
    assert torch.equal(w.detach(), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_norms_in_fp32(dtype):
    big = torch.full((512, 512), 60.0, dtype=dtype, requires_grad=True)  # Σθ² overflows fp16
    opt = AdamWN([big], lr=1e-3, target=1.0, rate=0.5)
    big.grad = torch.ones_like(big)  # (g = 0 gives 0/0 in Adam's fp16 eps, as in torch)
    opt.step()
    assert opt.state[big]["init_norm"].dtype == torch.float32
    assert opt.state[big]["init_norm"].item() == pytest.approx(60.0 * 512, rel=1e-3)
    assert big.dtype == dtype and torch.isfinite(big).all()
    assert opt.state[big]["exp_avg"].dtype == dtype


def test_maximize_equals_minimizing_the_negated_gradient():
    def negated(opt_maker):
        params = make_params()
        opt = opt_maker(params)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = -torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        return params

    got, _ = run(lambda p: AdamWN(one_group(p), lr=1e-2, target=1.2, maximize=True), steps=20)
    assert_same(negated(lambda p: AdamWN(one_group(p), lr=1e-2, target=1.2)), got)


def test_params_without_grads_are_skipped():
    a, b = make_params(shapes=[(3, 3), (3, 3)])
    b_before = b.detach().clone()
    opt = AdamWN([a, b], lr=1e-2, target=0.5, rate=0.5)
    a.grad = torch.ones_like(a)
    opt.step()
    assert torch.equal(b.detach(), b_before) and b not in opt.state
    assert opt.step() is None  # no grads at all: a no-op that still returns


def test_closure_is_evaluated_with_grad_enabled():
    w = torch.randn(3, requires_grad=True)
    opt = AdamWN([w], lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = w.square().sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    assert opt.step(closure).item() == before.square().sum().item()  # the loss at the weights it was evaluated on
    assert w.grad is not None and torch.equal(w.grad, 2 * before)  # the closure's backward ran with grad enabled


def test_target_zero_default_path_is_torch_fused_adamw_within_1e6():
    """The default path (on float32, the one-pass kernel where it is built) against torch's
    fused AdamW, 100 steps under a cosine schedule: the same arithmetic, up to float32 rounding."""
    ref, torch_opt = run(
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True), scheduler=cosine(), dtype=torch.float32
    )
    got, ours = run(
        lambda p: AdamWN(one_group(p), lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr"),
        scheduler=cosine(),
        dtype=torch.float32,
    )
    assert_same(ref, got, exact=False, rtol=1e-6, atol=1e-7)
    ref_state = [t for s in torch_opt.state.values() for k, t in sorted(s.items())]
    our_state = [t for s in ours.state.values() for k, t in sorted(s.items()) if k != "init_norm"]
    assert_same(ref_state, our_state, exact=False, rtol=1e-6, atol=1e-7)
