"""State-dict round trips and the foreach path against the single-tensor reference."""

import io
import warnings

import pytest
import torch
from helpers import assert_same, make_params, state_tensors, warmup_cosine

from normctl import SGDC, AdamC, AdamWN, schedules

CONFIGS = {
    "adamwn-tensor": lambda p, **kw: AdamWN(p, lr=1e-2, target=schedules.linear_ramp(1.0, 1.5, 8),
                                            rate=schedules.constant(0.1), **kw),
    "adamwn-group-post": lambda p, **kw: AdamWN(p, lr=1e-2, target=0.8, rate=0.5, scope="group",
                                                control_at="post_step", **kw),
    "adamwn-global": lambda p, **kw: AdamWN(
        [{"params": p[:2]}, {"params": p[2:], "target": 1.3}], lr=1e-2, target=1.1, rate=0.2,
        scope="global", **kw),
    "adamwn-13b": lambda p, **kw: AdamWN(p, lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr_ratio", **kw),
    "adamwn-mixed": lambda p, **kw: AdamWN(
        [{"params": p[:2], "control": False, "weight_decay": 0.1, "decay": "l1"},
         {"params": p[2:]}], lr=1e-2, target=2.0, **kw),
    "adamc": lambda p, **kw: AdamC([{"params": p[:2], "normalized": True}, {"params": p[2:]}],
                                   lr=1e-2, weight_decay=0.1, **kw),
    "sgdc": lambda p, **kw: SGDC(p, lr=0.1, momentum=0.9, weight_decay=1e-2, normalized=True, **kw),
    "sgdc-nesterov-decoupled": lambda p, **kw: SGDC(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, normalized=True,
        decoupled_weight_decay=True, decay="min", **kw),
}
SHAPES = [(5, 3), (4,), (2, 3, 4), ()]


def train(optimizer, scheduler, params, gen, steps):
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_continue_equals_uninterrupted(name):
    make = CONFIGS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = make_params(shapes=SHAPES)
        opt = make(params)
        sched = warmup_cosine(20, 4)(opt)
        gen = torch.Generator().manual_seed(5)
        train(opt, sched, params, gen, 10)

        buffer = io.BytesIO()
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(),
                    "params": [p.detach().clone() for p in params], "gen": gen.get_state()}, buffer)
        train(opt, sched, params, gen, 10)

        buffer.seek(0)
        saved = torch.load(buffer, weights_only=False)
        resumed = [p.clone().requires_grad_() for p in saved["params"]]
        opt2 = make(resumed)  # a fresh optimizer on the restored parameters, then loaded
        sched2 = warmup_cosine(20, 4)(opt2)
        opt2.load_state_dict(saved["opt"])
        sched2.load_state_dict(saved["sched"])
        gen2 = torch.Generator()
        gen2.set_state(saved["gen"])
        train(opt2, sched2, resumed, gen2, 10)

    assert_same(params, resumed)
    assert_same(state_tensors(opt), state_tensors(opt2))
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert {k: v for k, v in g1.items() if k != "params"} == {
            k: v for k, v in g2.items() if k != "params"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_foreach_equals_reference_for_params_and_state(name):
    make = CONFIGS[name]
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for foreach in (False, True):
            params = make_params(shapes=SHAPES + [(0, 2)])
            opt = make(params, foreach=foreach)
            train(opt, warmup_cosine(100, 10)(opt), params, torch.Generator().manual_seed(9), 100)
            results.append((params, state_tensors(opt)))
    (p_ref, s_ref), (p_fe, s_fe) = results
    assert len(s_ref) == len(s_fe) > 0
    assert_same(p_ref, p_fe, exact=False, rtol=1e-12, atol=1e-14)
    assert_same(s_ref, s_fe, exact=False, rtol=1e-12, atol=1e-14)
