"""Bad input: a clear ValueError/TypeError naming the argument, and nothing modified."""

import copy

import pytest
import torch

from normctl import SGDC, AdamC, AdamWN, param_groups, schedules


def w():
    return [torch.ones(3, 3, requires_grad=True)]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0"),
        (dict(eps=-1e-8), ValueError, "eps must be a finite number >= 0"),
        (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
        (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
        (dict(betas=0.9), ValueError, "betas must be a pair"),
        (dict(rate=1.5), ValueError, r"rate must be in \[0, 1\]"),
        (dict(rate=-0.1, rate_scaling="lr"), ValueError, "rate must be a finite number >= 0"),
        (dict(target=-1.0), ValueError, "target must be a finite number >= 0"),
        (dict(target="big"), ValueError, "target must be a number >= 0, a schedule, 'auto' or an AutoTarget"),
        (dict(target=[1.0]), TypeError, "target must be a float or a callable"),
        (dict(scope="layer"), ValueError, "scope must be one of"),
        (dict(rate_scaling="wd"), ValueError, "rate_scaling must be one of"),
        (dict(control_at="later"), ValueError, "control_at must be one of"),
        (dict(decay="l3"), ValueError, "decay must be one of"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number >= 0"),
        (dict(max_lr=0.0), ValueError, "max_lr must be None or a finite number > 0"),
        (dict(control=1), TypeError, "control must be a bool"),
        (dict(lr=float("nan")), ValueError, "lr must not be NaN"),
        (dict(foreach="yes"), TypeError, "foreach must be None, True or False"),
        (dict(skip_nonfinite=1), TypeError, "skip_nonfinite must be a bool"),
    ],
)
def test_adamwn_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdamWN(w(), **kwargs)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (AdamC, dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
        (AdamC, dict(max_lr=-0.1), "max_lr must be None or a finite number > 0"),
        (AdamC, dict(decay="l0"), "decay must be one of"),
        (AdamC, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
        (SGDC, dict(momentum=1.5), r"momentum must be in \[0, 1\]"),
        (SGDC, dict(dampening=-1.0), r"dampening must be in \[0, 1\]"),
        (SGDC, dict(lr=-0.1), "lr must be a finite number >= 0"),
    ],
)
def test_corrected_decay_optimizers_reject(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(w(), normalized=True, **kwargs)


@pytest.mark.parametrize("cls", [AdamWN, AdamC, SGDC])
def test_unknown_param_group_keys_fail_loudly(cls):
    with pytest.raises(ValueError, match=r"unknown param-group key\(s\) \['wieght_decay'\]"):
        cls([{"params": w(), "wieght_decay": 0.1}], normalized=True) if cls is not AdamWN else cls(
            [{"params": w(), "wieght_decay": 0.1}]
        )


def test_group_values_are_validated_too():
    with pytest.raises(ValueError, match="rate must be in"):
        AdamWN([{"params": w(), "rate": 2.0}])
    opt = AdamWN(w())
    with pytest.raises(ValueError, match="target must be a finite number >= 0"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "target": -2.0})
    assert len(opt.param_groups) == 1


def test_complex_and_sparse_are_refused():
    with pytest.raises(TypeError, match="complex"):
        AdamWN([torch.ones(2, dtype=torch.complex64, requires_grad=True)])
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = AdamWN(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(TypeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before) and not opt.state


def test_bad_schedule_value_raises_before_anything_changes():
    params = [torch.randn(4, 4, requires_grad=True)]
    rate = schedules.piecewise_linear([(0, 0.1), (2, 0.1), (3, 5.0)])
    opt = AdamWN(params, lr=1e-2, rate=rate)
    for _ in range(3):
        params[0].grad = torch.randn(4, 4)
        opt.step()
    snapshot = (params[0].detach().clone(), copy.deepcopy(opt.state_dict()))
    params[0].grad = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"rate k_t must be in \[0, 1\] at step 3"):
        opt.step()
    assert torch.equal(params[0].detach(), snapshot[0])
    after = opt.state_dict()
    assert after["param_groups"] == snapshot[1]["param_groups"]
    for key, value in snapshot[1]["state"][0].items():
        assert torch.equal(after["state"][0][key], value)


def test_rate_scaled_by_lr_must_stay_in_unit_interval():
    opt = AdamWN(w(), lr=2.0, target=0.0, rate=0.9, rate_scaling="lr")
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 3)
    with pytest.raises(ValueError, match="rate_scaling='lr'"):
        opt.step()


def test_global_scope_group_added_after_first_step_is_refused():
    opt = AdamWN(w(), scope="global")
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 3)
    opt.step()
    with pytest.raises(ValueError, match="after the first step"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)]})


def test_param_groups_rejects_bad_arguments():
    model = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        param_groups(model, weight_decay=-1)
    with pytest.raises(ValueError, match="embeddings must be"):
        param_groups(model, embeddings="sometimes")
    with pytest.raises(ValueError, match="normalized must be"):
        param_groups(model, normalized="magic")
    with pytest.raises(ValueError, match="not found in the model"):
        param_groups(model, normalized={"nope.weight"})
    with pytest.raises(ValueError, match="output_layer"):
        param_groups(model, output_layer="head")


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="steps must be >= 0"):
        schedules.linear_ramp(0, 1, -1)
    with pytest.raises(ValueError, match="total must be > 0"):
        schedules.cosine(1, 0, 0)
    with pytest.raises(ValueError, match="warmup must be in"):
        schedules.cosine(1, 0, 10, warmup=11)
    with pytest.raises(ValueError, match="strictly increasing"):
        schedules.piecewise_linear([(5, 1.0), (5, 2.0)])
    with pytest.raises(ValueError, match="final_norm_ratio must be >= 0"):
        schedules.target_from_adamw(-1.0, 10)
