"""The l2 / l1 / min decay types, checked against the formulas by hand (g = 0 isolates them)."""

import pytest
import torch

from normctl import SGDC, AdamC, AdamWN
from normctl.rules import decay_term

THETA = [[0.5, -2.0, 0.25], [-0.1, 3.0, -1.0]]


def by_hand(kind, lr, wd):
    t = torch.tensor(THETA, dtype=torch.float64)
    if kind == "l2":
        return t - lr * wd * t
    if kind == "l1":
        return t - lr * wd * t.sign()
    return t - lr * 0.1 * t.sign()  # min |θ_i| = 0.1; λ is not used by this type


def one_step(make):
    w = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    opt = make([w])
    w.grad = torch.zeros_like(w)
    opt.step()
    return w.detach()


@pytest.mark.parametrize("kind", ["l2", "l1", "min"])
@pytest.mark.parametrize("foreach", [False, True])
def test_decay_types_on_every_optimizer(kind, foreach):
    lr, wd = 0.1, 0.3
    expected = by_hand(kind, lr, wd)
    makers = [
        lambda p: AdamWN(p, lr=lr, control=False, weight_decay=wd, decay=kind, foreach=foreach),
        lambda p: AdamC(p, lr=lr, weight_decay=wd, decay=kind, normalized=True, foreach=foreach),
        lambda p: SGDC(p, lr=lr, weight_decay=wd, decay=kind, normalized=True, foreach=foreach),
        lambda p: SGDC(
            p, lr=lr, weight_decay=wd, decay=kind, normalized=True, decoupled_weight_decay=True, foreach=foreach
        ),
    ]
    for make in makers:
        torch.testing.assert_close(one_step(make), expected, rtol=1e-15, atol=1e-15)


def test_corrected_min_decay_is_scaled_by_lr_over_max_lr():
    got = one_step(lambda p: AdamC(p, lr=0.1, max_lr=0.4, weight_decay=0.3, decay="min", normalized=True))
    t = torch.tensor(THETA, dtype=torch.float64)
    torch.testing.assert_close(got, t - 0.1 * (0.1 / 0.4) * 0.1 * t.sign(), rtol=1e-15, atol=0)


def test_min_decay_zeroes_the_smallest_entry_and_skips_undecayed_groups():
    got = one_step(lambda p: AdamC(p, lr=1.0, weight_decay=1.0, decay="min", normalized=True))
    assert got[1, 0] == 0.0
    untouched = one_step(lambda p: AdamC(p, lr=1.0, weight_decay=0.0, decay="min", normalized=True))
    assert torch.equal(untouched, torch.tensor(THETA, dtype=torch.float64))


def test_decay_term_of_empty_tensor_and_unknown_kind():
    assert decay_term(torch.zeros(0), "min", 0.1).shape == (0,)
    with pytest.raises(ValueError, match="decay must be one of"):
        decay_term(torch.zeros(1), "l3", 0.1)
