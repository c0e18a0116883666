"""Bad input and edge cases found by fault injection: each gets a clear error that changes
nothing, or an exact answer."""

import copy
import math
import warnings

import pytest
import torch
from helpers import one_group
from torch import nn

import normctl
from normctl.optim import _kept_norms, _one_pass_cpu

# -- loading a state dict ------------------------------------------------------------------------


def stepped(optimizer_class, params, **kwargs):
    optimizer = optimizer_class(params, **kwargs)
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        p.grad = torch.randn_like(p)
    optimizer.step()
    return optimizer


def snapshot(optimizer):
    return copy.deepcopy(optimizer.state_dict()), [
        p.detach().clone() for g in optimizer.param_groups for p in g["params"]
    ]


def assert_unchanged(optimizer, before):
    state, params = before
    now_state, now_params = snapshot(optimizer)
    assert now_state["param_groups"] == state["param_groups"]
    assert now_state["state"].keys() == state["state"].keys()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(now_state["state"][index][key]), torch.as_tensor(value)), key
    assert all(torch.equal(a, b) for a, b in zip(now_params, params))


@pytest.mark.parametrize(
    "make",
    [
        lambda ps, **kw: normctl.AdamWN(one_group(ps), lr=1e-3, **kw),
        lambda ps, **kw: normctl.AdamC(ps, lr=1e-3, weight_decay=0.1, **kw),
        lambda ps, **kw: normctl.SGDC(ps, lr=1e-1, momentum=0.9, weight_decay=1e-3, **kw),
        lambda ps, **kw: normctl.NormControl(torch.optim.Adam(ps, lr=1e-3), **kw),
    ],
    ids=["AdamWN", "AdamC", "SGDC", "NormControl"],
)
def test_a_state_of_other_shapes_is_refused_naming_the_tensor(make):
    warnings.simplefilter("ignore")  # "no group is normalized"
    source = make([nn.Parameter(torch.randn(4, 4))])
    for p in source.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    source.step()
    for shape in [(2, 8), (3, 3)]:  # the same size in another shape, and a smaller tensor
        destination = make([nn.Parameter(torch.randn(*shape))])
        before = snapshot(destination)
        with pytest.raises(ValueError, match=r"state '\w+' of tensor 0 \(param group 0\) has shape \(4, 4\)"):
            destination.load_state_dict(source.state_dict())
        assert_unchanged(destination, before)


def test_another_optimizers_state_is_refused():
    p = nn.Parameter(torch.randn(4, 4))
    adamwn, adamc = stepped(normctl.AdamWN, [p], lr=1e-3), normctl.AdamC([p], lr=1e-3, normalized=True)
    before = snapshot(adamc)
    with pytest.raises(ValueError, match="saved by another optimizer"):
        adamc.load_state_dict(adamwn.state_dict())  # AdamWN's target, rate … would enter AdamC's groups
    assert_unchanged(adamc, before)
    fresh = normctl.AdamWN([p], lr=1e-3)
    with pytest.raises(ValueError, match=r"lacks \[.*'skip_nonfinite'.*\]: it was saved by another optimizer"):
        fresh.load_state_dict(torch.optim.AdamW([p], lr=1e-3).state_dict())
    with pytest.raises(ValueError, match="needs an optimizer state dict"):
        fresh.load_state_dict({"model": {}})


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: normctl.AdamWN(one_group(ps), lr=1e-3),
        lambda ps: normctl.AdamC(ps, lr=1e-3, weight_decay=0.1, normalized=True),
        lambda ps: normctl.SGDC(ps, lr=1e-1, momentum=0.9, weight_decay=1e-3, normalized=True),
        lambda ps: normctl.NormControl(torch.optim.Adam(ps, lr=1e-3)),
        lambda ps: normctl.CorrectedDecay(torch.optim.AdamW(ps, lr=1e-3), normalized=True),
    ],
    ids=["AdamWN", "AdamC", "SGDC", "NormControl", "CorrectedDecay"],
)
def test_a_copied_optimizer_loads_the_state_saved_before(make):
    """torch's unpickling adds ``differentiable`` to ``defaults`` but not to the groups (a deepcopy,
    or a framework that copies the optimizer, as the Hugging Face Trainer's resume does)."""
    p = nn.Parameter(torch.randn(4, 4))
    source = make([p])
    p.grad = torch.randn_like(p)
    source.step()
    copied = copy.deepcopy(source)
    copied.load_state_dict(copy.deepcopy(source.state_dict()))  # as through a file: no shared tensors
    assert copied.state_dict()["param_groups"] == source.state_dict()["param_groups"]
    (twin,) = copied.param_groups[0]["params"]
    for q in (p, twin):
        q.grad = torch.ones_like(q)
    source.step()
    copied.step()  # the copy steps as the original does (a wrapper keeps its inner optimizer)
    assert torch.equal(p, twin)


def test_named_groups_saved_in_another_order_are_refused():
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
    source = stepped(normctl.AdamWN, [dict(params=[a], name="matrices"), dict(params=[b], name="embeddings")], lr=1e-3)
    saved = copy.deepcopy(source.state_dict())
    saved["param_groups"] = saved["param_groups"][::-1]  # each group's ‖θ_0‖ would attach to the other tensor
    destination = normctl.AdamWN([dict(params=[a], name="matrices"), dict(params=[b], name="embeddings")], lr=1e-3)
    before = snapshot(destination)
    with pytest.raises(ValueError, match="param group 0 of the state dict is name 'embeddings'.*another order"):
        destination.load_state_dict(saved)
    assert_unchanged(destination, before)


def test_a_matching_state_still_loads_and_continues_exactly():
    p = nn.Parameter(torch.randn(8, 8, dtype=torch.float64))
    source = stepped(normctl.AdamWN, [p], lr=1e-3, target=1.2)
    twin = nn.Parameter(p.detach().clone())
    destination = normctl.AdamWN([twin], lr=1e-3, target=1.2)
    destination.load_state_dict(copy.deepcopy(source.state_dict()))  # as through a file: no shared tensors
    for q in (p, twin):
        q.grad = torch.ones_like(q)
    source.step()
    destination.step()
    assert torch.equal(p, twin)


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda p: normctl.AdamC([p], lr=0.0, normalized=True),
        lambda p: normctl.SGDC([p], lr=0.0, normalized=True),
        lambda p: normctl.AdamWN([p], lr=0.0, rate_scaling="lr_ratio"),
        lambda p: normctl.NormControl(torch.optim.Adam([p], lr=0.0), rate_scaling="lr_ratio"),
        lambda p: normctl.CorrectedDecay(torch.optim.AdamW([p], lr=0.0), normalized=True),
    ],
    ids=["AdamC", "SGDC", "AdamWN", "NormControl", "CorrectedDecay"],
)
def test_lr_zero_at_construction_needs_max_lr(build):
    with pytest.raises(ValueError, match="lr is 0 at construction.*pass max_lr="):
        build(nn.Parameter(torch.randn(3, 3)))


def test_a_warm_up_from_zero_with_max_lr_works():
    p = nn.Parameter(torch.randn(3, 3))
    optimizer = normctl.AdamC([p], lr=0.0, normalized=True, max_lr=1e-2, weight_decay=0.1)
    for lr in (0.0, 5e-3, 1e-2):
        optimizer.param_groups[0]["lr"] = lr
        p.grad = torch.randn_like(p)
        optimizer.step()
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("name", ["lr", "weight_decay", "eps", "max_lr"])
def test_infinite_settings_are_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be .*finite"):
        normctl.AdamC([nn.Parameter(torch.randn(2))], **{name: math.inf})
    if name != "max_lr":
        with pytest.raises(ValueError, match=f"{name} must be .*finite"):
            normctl.AdamWN([nn.Parameter(torch.randn(2))], **{name: math.inf})


def test_wrappers_refuse_misspelt_group_keys():
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"unknown param-group key\(s\) \['contol'\]"):
        normctl.NormControl(torch.optim.Adam([dict(params=[p], contol=False)], lr=1e-3))
    with pytest.raises(ValueError, match=r"unknown param-group key\(s\) \['normalised'\]"):
        normctl.CorrectedDecay(torch.optim.AdamW([dict(params=[p], normalised=True)], lr=1e-3))
    inner = torch.optim.Adam([p], lr=1e-3)
    wrapper = normctl.NormControl(inner)
    with pytest.raises(ValueError, match="unknown param-group key"):
        wrapper.add_param_group(dict(params=[nn.Parameter(torch.randn(2))], tagret=2.0))
    assert len(inner.param_groups) == 1


def test_meta_parameters_get_a_clear_error_at_the_first_step():
    with torch.device("meta"):
        layer = nn.Linear(4, 3)
    optimizer = normctl.AdamWN(one_group(layer.parameters()), lr=1e-3)  # building it is fine
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(ValueError, match="cannot step meta-device parameters.*to_empty"):
        optimizer.step()


# -- group and global scope with tensors that have no gradient -------------------------------------


@pytest.mark.parametrize("scope", ["group", "global"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_post_step_rate_one_is_an_exact_retraction_with_intermittent_gradients(scope, wrapped):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(6, 6, dtype=torch.float64)) for _ in range(3)]
    initial = math.sqrt(sum(float(p.detach().square().sum()) for p in params))
    settings = dict(target=1.5, rate=1.0, scope=scope, control_at="post_step")
    if wrapped:
        optimizer = normctl.NormControl(torch.optim.Adam(one_group(params), lr=1e-2), **settings)
    else:
        optimizer = normctl.AdamWN(one_group(params), lr=1e-2, **settings)
    for step in range(30):
        for i, p in enumerate(params):  # tensor i has a gradient on some steps only
            p.grad = torch.randn_like(p) if (step + i) % 3 else None
        optimizer.step()
        norm = math.sqrt(sum(float(p.detach().square().sum()) for p in params))
        assert norm == pytest.approx(1.5 * initial, rel=1e-12)


# -- the one-pass CPU kernel's kept norms ----------------------------------------------------------

needs_kernel = pytest.mark.skipif(_one_pass_cpu.kernel() is None, reason="the one-pass CPU kernel is not built")


@needs_kernel
def test_a_write_through_data_is_seen_at_the_next_step():
    torch.manual_seed(0)
    weights = torch.randn(64, 64)
    p, q = nn.Parameter(weights.clone()), nn.Parameter(weights.clone())
    kernel = normctl.AdamWN([p], lr=1e-3, target=1.0, rate=0.5)  # the one-pass kernel keeps ‖θ‖
    reference = normctl.AdamWN([q], lr=1e-3, target=1.0, rate=0.5, fused=False)  # measures ‖θ‖ every step
    gradients = torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:
            p.data.mul_(3)  # changes neither the version counter nor the storage
            q.data.mul_(3)
        grad = torch.randn(64, 64, generator=gradients)
        p.grad, q.grad = grad.clone(), grad.clone()
        if step == 3:
            with pytest.warns(UserWarning, match="without bumping their version counter"):
                kernel.step()
        else:
            kernel.step()
        reference.step()
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel_sums_otherwise", [False, True])
def test_a_state_dict_resume_is_bit_identical_through_the_one_pass_kernel(dtype, kernel_sums_otherwise, monkeypatch):
    """Saving drops the kept norms, so the run that goes on measures ‖θ‖ at its next step exactly
    as the run resumed from the saved state does. The kernel sums θ² in its own order, so its
    norm may differ from torch's in the last bits (a resume 1.7e-6 off, growing, was seen in a
    400-step run); ``kernel_sums_otherwise`` makes the kept norms 1e-4 off, enough to show in
    every step's float32 arithmetic."""
    if kernel_sums_otherwise:
        keep = _kept_norms.KeptNorms.keep
        monkeypatch.setattr(
            _kept_norms.KeptNorms,
            "keep",
            lambda self, params, norm_sq: keep(self, params, norm_sq * (1 + 1e-4)),
        )

    def run(resume_at: int | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)).to(dtype)
        groups = normctl.param_groups(model, weight_decay=0.1)
        optimizer = normctl.AdamWN(groups, lr=1e-2, target=1.3, rate=0.05)
        data = torch.Generator().manual_seed(1)
        for step in range(40):
            if step == resume_at:
                saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
                model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)).to(dtype)
                optimizer = normctl.AdamWN(
                    normctl.param_groups(model, weight_decay=0.1), lr=1e-2, target=1.3, rate=0.05
                )
                model.load_state_dict(saved[0])
                optimizer.load_state_dict(saved[1])
            x = torch.randn(16, 32, generator=data).to(dtype)
            loss = model(x).float().square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if resume_at is None and step + 1 == 20:
                optimizer.state_dict()  # the uninterrupted run saves a checkpoint here
        return torch.cat([p.detach().flatten().float() for p in model.parameters()])

    assert torch.equal(run(None), run(20))


def test_a_bfloat16_state_keeps_its_float32_initial_norms_through_a_load():
    for wrap in (False, True):
        p = nn.Parameter(torch.randn(16, 16).to(torch.bfloat16))
        make = (lambda ps: normctl.NormControl(torch.optim.Adam(ps, lr=1e-3))) if wrap else normctl.AdamWN
        source = make([p])
        p.grad = torch.randn_like(p)
        source.step()
        key = "init_norm"
        saved = copy.deepcopy(source.state_dict())
        destination = make([nn.Parameter(p.detach().clone())])
        destination.load_state_dict(saved)
        (state,) = destination.state.values()
        (original,) = source.state.values()
        assert state[key].dtype == torch.float32 and torch.equal(state[key], original[key])


# -- zero-initialised tensors under a relative target ----------------------------------------------


def zero_init_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    nn.init.zeros_(model[0].bias)  # LayerNorm's shift and the last bias start at 0 too: zero it all
    nn.init.zeros_(model[2].bias)
    return model


@pytest.mark.parametrize(
    "path", [dict(), dict(fused=False), dict(foreach=True)], ids=["default", "reference", "foreach"]
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_zero_initialised_tensors_are_left_to_adam_or_adamw(path, weight_decay):
    model, twin = zero_init_model(), zero_init_model()
    optimizer = normctl.AdamWN(
        one_group(model.parameters()), lr=1e-2, target=1.5, rate=0.1, weight_decay=weight_decay, **path
    )
    reference = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=False)
    zero = [i for i, p in enumerate(twin.parameters()) if not p.detach().any()]
    gradients = torch.Generator().manual_seed(1)
    with pytest.warns(UserWarning, match=r"3 tensor\(s\) start at norm 0.*left uncontrolled"):
        for _ in range(20):  # the same gradients for both, whatever the other tensors do
            for p, q in zip(model.parameters(), twin.parameters()):
                p.grad = torch.randn(p.shape, generator=gradients)
                q.grad = p.grad.clone()
            optimizer.step()
            reference.step()
    params, twins = list(model.parameters()), list(twin.parameters())
    for i in zero:  # Adam's step with AdamW's decay of weight_decay, not a decay toward r·0
        torch.testing.assert_close(params[i], twins[i], rtol=1e-5, atol=1e-6)
        assert params[i].detach().any()
    for i, (p, q) in enumerate(zip(params, twins)):
        if i not in zero:  # the others are controlled: not AdamW
            assert not torch.allclose(p, q)


def test_target_zero_never_needs_the_initial_norm():
    model = zero_init_model()
    optimizer = normctl.AdamWN(one_group(model.parameters()), lr=1e-2, target=0.0, rate=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "starts at norm 0" warning: AdamW's decay does not use ‖θ_0‖
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 8)).sum().backward()
            optimizer.step()


@pytest.mark.parametrize("scope", ["group", "global"])
def test_a_scope_that_starts_at_norm_zero_is_left_uncontrolled(scope):
    p = nn.Parameter(torch.zeros(4, 4))
    optimizer = normctl.AdamWN([p], lr=1e-2, target=2.0, rate=0.5, scope=scope)
    with pytest.warns(UserWarning, match="starts at norm 0.*left uncontrolled"):
        p.grad = torch.ones_like(p)
        optimizer.step()
    assert torch.allclose(p, torch.full_like(p, -1e-2))  # Adam's first step, nothing else


def test_norm_control_wrapper_takes_model_parameters_with_zero_tensors():
    model, twin = zero_init_model(), zero_init_model()
    optimizer = normctl.NormControl(torch.optim.Adam(one_group(model.parameters()), lr=1e-2), target=1.5, rate=0.1)
    reference = torch.optim.Adam(twin.parameters(), lr=1e-2)
    gradients = torch.Generator().manual_seed(1)
    with pytest.warns(UserWarning, match="start at norm 0"):
        for _ in range(5):
            for p, q in zip(model.parameters(), twin.parameters()):
                p.grad = torch.randn(p.shape, generator=gradients)
                q.grad = p.grad.clone()
            optimizer.step()
            reference.step()
    torch.testing.assert_close(model[0].bias, twin[0].bias)  # plain Adam
    assert not torch.allclose(model[0].weight, twin[0].weight)  # controlled
