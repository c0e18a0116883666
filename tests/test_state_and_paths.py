"""State-dict round trips and the foreach path against the single-tensor reference."""

import warnings

import pytest
import torch
from helpers import (
    assert_same,
    make_params,
    save_resume_and_continue,
    state_tensors,
    train_steps,
    warmup_cosine,
)

from normctl import SGDC, AdamC, AdamWN, schedules

CONFIGS = {
    "adamwn-tensor": lambda p, **kw: AdamWN(
        p, lr=1e-2, target=schedules.linear_ramp(1.0, 1.5, 8), rate=schedules.constant(0.1), **kw
    ),
    "adamwn-group-post": lambda p, **kw: AdamWN(
        p, lr=1e-2, target=0.8, rate=0.5, scope="group", control_at="post_step", **kw
    ),
    "adamwn-global": lambda p, **kw: AdamWN(
        [{"params": p[:2]}, {"params": p[2:], "target": 1.3}], lr=1e-2, target=1.1, rate=0.2, scope="global", **kw
    ),
    "adamwn-13b": lambda p, **kw: AdamWN(p, lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr_ratio", **kw),
    "adamwn-mixed": lambda p, **kw: AdamWN(
        [{"params": p[:2], "control": False, "weight_decay": 0.1, "decay": "l1"}, {"params": p[2:]}],
        lr=1e-2,
        target=2.0,
        **kw,
    ),
    "adamc": lambda p, **kw: AdamC(
        [{"params": p[:2], "normalized": True}, {"params": p[2:]}], lr=1e-2, weight_decay=0.1, **kw
    ),
    "sgdc": lambda p, **kw: SGDC(p, lr=0.1, momentum=0.9, weight_decay=1e-2, normalized=True, **kw),
    "sgdc-nesterov-decoupled": lambda p, **kw: SGDC(
        p,
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-2,
        normalized=True,
        decoupled_weight_decay=True,
        decay="min",
        **kw,
    ),
}
SHAPES = [(5, 3), (4,), (2, 3, 4), ()]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_continue_equals_uninterrupted(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (params, opt), (resumed, opt2) = save_resume_and_continue(CONFIGS[name], SHAPES)
    assert_same(params, resumed)
    assert_same(state_tensors(opt), state_tensors(opt2))
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert {k: v for k, v in g1.items() if k != "params"} == {k: v for k, v in g2.items() if k != "params"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_foreach_equals_reference_for_params_and_state(name):
    make = CONFIGS[name]
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for foreach in (False, True):
            params = make_params(shapes=SHAPES + [(0, 2)])
            opt = make(params, foreach=foreach)
            train_steps(opt, warmup_cosine(100, 10)(opt), params, torch.Generator().manual_seed(9), 100)
            results.append((params, state_tensors(opt)))
    (p_ref, s_ref), (p_fe, s_fe) = results
    assert len(s_ref) == len(s_fe) > 0
    assert_same(p_ref, p_fe, exact=False, rtol=1e-12, atol=1e-14)
    assert_same(s_ref, s_fe, exact=False, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_deep_copy_steps_on_exactly_as_the_original(name):
    """copy.deepcopy (as trainers do to keep a best model's optimizer) copies the state and
    rebuilds the speed caches empty: both copies then take the same steps."""
    import copy

    def train(params, optimizer, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = make_params(torch.float32, shapes=SHAPES)
        optimizer = CONFIGS[name](params)
        train(params, optimizer, seed=1)
        twin_params, twin = copy.deepcopy((params, optimizer))
        train(params, optimizer, seed=2)
        train(twin_params, twin, seed=2)
    assert_same(params, twin_params)
    assert_same(state_tensors(optimizer), state_tensors(twin))
