"""Non-finite gradients: skipped whole with skip_nonfinite=True; propagated as in torch otherwise."""

import copy

import pytest
import torch

from normctl import SGDC, AdamC, AdamWN


@pytest.mark.parametrize(
    "make",
    [
        lambda p, **kw: AdamWN(p, lr=1e-2, target=1.5, **kw),
        lambda p, **kw: AdamWN(p, lr=1e-2, target=1.5, scope="global", **kw),
        lambda p, **kw: AdamC(p, lr=1e-2, normalized=True, **kw),
        lambda p, **kw: SGDC(p, lr=1e-2, momentum=0.9, normalized=True, **kw),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_nonfinite_leaves_params_and_state_untouched(make, bad):
    params = [torch.randn(3, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = make(params, skip_nonfinite=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])
    params[0].grad = torch.randn(3, 3)
    params[1].grad = torch.tensor([1.0, bad, 0.0, 2.0])
    opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before[0]))
    state = opt.state_dict()["state"]
    for i, entries in before[1].items():
        for key, value in entries.items():
            assert torch.equal(state[i][key], value)
    assert all(g["skipped_steps"] == 1 for g in opt.param_groups)
    for p in params:  # the next finite step proceeds normally
        p.grad = torch.randn_like(p)
    opt.step()
    assert all(torch.isfinite(p).all() for p in params)


def test_without_skip_nonfinite_nan_propagates_like_torch():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    ours, theirs = AdamWN([a], lr=1e-2, target=0.0, rate=0.0), torch.optim.Adam([b], lr=1e-2)
    a.grad = torch.tensor([1.0, float("nan"), 1.0])
    b.grad = a.grad.clone()
    ours.step()
    theirs.step()
    assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.isnan(a).any()
