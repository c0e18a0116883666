"""Property tests over shapes, dtypes and hyperparameters."""

import pytest
import torch
from helpers import one_group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normctl import AdamC, AdamWN
from normctl.rules import norm_control_factor

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tensors(shape_list, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shape_list]


def step_with_random_grads(opt, params, seed, steps):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


@SETTINGS
@given(
    st.lists(shapes, min_size=1, max_size=4),
    dtypes,
    st.floats(1e-4, 0.1),
    st.floats(0, 1.0),
    st.booleans(),
    st.integers(0, 1000),
)
def test_target_zero_is_torch_adamw(shape_list, dtype, lr, wd, foreach, seed):
    a, b = tensors(shape_list, dtype, seed), tensors(shape_list, dtype, seed)
    step_with_random_grads(torch.optim.AdamW(a, lr=lr, weight_decay=wd, foreach=foreach), a, seed, 5)
    step_with_random_grads(
        AdamWN(one_group(b), lr=lr, target=0.0, rate=wd, rate_scaling="lr", foreach=foreach), b, seed, 5
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@SETTINGS
@given(
    st.lists(shapes, min_size=1, max_size=4),
    dtypes,
    st.floats(0.1, 4.0),
    st.sampled_from(["tensor", "group", "global"]),
    st.integers(0, 1000),
)
def test_rate_one_post_step_lands_on_target_for_any_shape(shape_list, dtype, target, scope, seed):
    params = [p for p in tensors(shape_list, dtype, seed) if p.numel() > 0] or tensors([(3,)], dtype, seed)
    init = [p.detach().norm(dtype=torch.float64).item() for p in params]
    opt = AdamWN(one_group(params), lr=1e-2, target=target, rate=1.0, scope=scope, control_at="post_step")
    step_with_random_grads(opt, params, seed, 3)
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    if scope == "tensor":
        for p, n0 in zip(params, init):
            assert p.detach().norm(dtype=torch.float64).item() == pytest.approx(target * n0, rel=rel)
    else:
        total = sum(p.detach().norm(dtype=torch.float64).item() ** 2 for p in params) ** 0.5
        assert total == pytest.approx(target * sum(n * n for n in init) ** 0.5, rel=rel)


@SETTINGS
@given(
    st.lists(shapes, min_size=1, max_size=3),
    st.sampled_from([torch.float32, torch.bfloat16]),
    st.floats(0, 1),
    st.floats(0, 10),
    st.integers(0, 1000),
)
def test_never_nan_for_finite_inputs(shape_list, dtype, rate, target, seed):
    params = [p for p in tensors(shape_list, dtype, seed)]
    for make in (
        lambda: AdamWN(one_group(params), lr=1e-2, rate=rate, target=target, relative_target=False),
        lambda: AdamC(params, lr=1e-2, normalized=True),
    ):
        opt = make()
        step_with_random_grads(opt, params, seed, 3)
        assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params)


@SETTINGS
@given(st.one_of(st.just(0.0), st.floats(1e-300, 1e6)), st.floats(0, 1e6), st.floats(0, 1))
def test_norm_control_factor_closed_form(norm, target, rate):
    factor = norm_control_factor(torch.tensor(norm, dtype=torch.float64), target, rate).item()
    if norm == 0:
        assert factor == 1.0
    else:
        assert factor == pytest.approx(1 - rate * (1 - target / norm), rel=1e-12, abs=1e-12)
        assert factor * norm == pytest.approx((1 - rate) * norm + rate * target, rel=1e-9, abs=1e-9)


def test_norm_control_factor_leaves_weights_too_small_to_rescale():
    tiny = torch.tensor([5e-324, 1e-45], dtype=torch.float64)  # τ/‖θ‖ overflows
    assert torch.equal(norm_control_factor(tiny, 1e300, 1.0), torch.ones(2, dtype=torch.float64))
    f32 = torch.tensor(1e-45, dtype=torch.float32)
    assert norm_control_factor(f32, 1.0, 0.5).item() == 1.0
