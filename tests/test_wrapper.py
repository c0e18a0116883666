"""NormControl / CorrectedDecay around torch optimizers, Lion, and create_optimizer."""

import warnings

import pytest
import torch
from helpers import (
    assert_same,
    cosine,
    make_params,
    one_group,
    run,
    save_resume_and_continue,
    state_tensors,
    warmup_cosine,
)

from normctl import (
    SGDC,
    AdamC,
    AdamWN,
    CorrectedDecay,
    Lion,
    NormControl,
    available_optimizers,
    create_optimizer,
    schedules,
)


@pytest.mark.parametrize("foreach", [False, True])
def test_wrapped_adamw_without_decay_is_torch_adamw(foreach):
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=foreach), scheduler=cosine())
    got, _ = run(
        lambda p: NormControl(
            torch.optim.AdamW(one_group(p), lr=1e-2, weight_decay=0.0, foreach=foreach),
            target=0.0,
            rate=0.1,
            rate_scaling="lr",
        ),
        scheduler=cosine(),
    )
    assert_same(ref, got)


def test_wrapped_adamw_at_constant_lr_with_rate_lr_times_wd():
    lr, wd = 3e-3, 0.05
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd))
    got, _ = run(
        lambda p: NormControl(torch.optim.AdamW(one_group(p), lr=lr, weight_decay=0.0), target=0.0, rate=lr * wd)
    )
    assert_same(ref, got)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_wrapped_sgd_is_decoupled_decay_sgd(momentum):
    with pytest.warns(UserWarning, match="no param group has normalized=True"):  # plain decoupled SGD
        ref, _ = run(lambda p: SGDC(p, lr=0.1, momentum=momentum, weight_decay=0.01, decoupled_weight_decay=True))
    got, _ = run(
        lambda p: NormControl(
            torch.optim.SGD(one_group(p), lr=0.1, momentum=momentum), target=0.0, rate=0.01, rate_scaling="lr"
        )
    )
    assert_same(ref, got, exact=False, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scope", ["tensor", "group", "global"])
@pytest.mark.parametrize("control_at", ["pre_step", "post_step"])
def test_wrapped_adam_is_adamwn(scope, control_at):
    kw = dict(target=schedules.linear_ramp(1.0, 1.6, 20), rate=0.1, scope=scope, control_at=control_at)
    ref, ref_opt = run(lambda p: AdamWN(one_group(p), lr=1e-2, **kw), scheduler=cosine())
    got, opt = run(lambda p: NormControl(torch.optim.Adam(one_group(p), lr=1e-2), **kw), scheduler=cosine())
    assert_same(ref, got)
    assert opt.param_groups[0]["schedule_step"] == 100 and opt.param_groups is opt.optimizer.param_groups


def test_corrected_decay_around_adamw_is_adamc():
    ref, _ = run(lambda p: AdamC(p, lr=1e-2, weight_decay=0.1, normalized=True), scheduler=warmup_cosine())
    got, opt = run(
        lambda p: CorrectedDecay(torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), normalized=True),
        scheduler=warmup_cosine(),
    )
    assert_same(ref, got, exact=False, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["weight_decay"] == 0.1  # restored after every step


@pytest.mark.parametrize(
    "make",
    [
        lambda p: NormControl(
            torch.optim.SGD(one_group(p), lr=0.05, momentum=0.9), target=1.2, rate=0.2, scope="global"
        ),
        lambda p: NormControl(Lion(one_group(p), lr=1e-3), target=schedules.linear_ramp(1, 2, 8), rate=0.3),
        lambda p: CorrectedDecay(Lion(p, lr=1e-3, weight_decay=0.5), normalized=True),
    ],
)
def test_wrapper_state_dict_continue_equals_uninterrupted(make):
    (params, opt), (resumed, opt2) = save_resume_and_continue(make, [(5, 3), (4,), (2, 3, 4)])
    assert_same(params, resumed)
    assert opt2.param_groups is opt2.optimizer.param_groups
    assert_same(state_tensors(opt.optimizer), state_tensors(opt2.optimizer))
    assert_same(state_tensors(opt), state_tensors(opt2))


def test_wrapper_behaves_as_an_optimizer():
    params = make_params(shapes=[(3, 3)])
    with pytest.warns(UserWarning, match="both shrink the weights"):
        opt = NormControl(torch.optim.AdamW(one_group(params), lr=1e-2, weight_decay=0.1), target=1.0)
    assert isinstance(opt, torch.optim.Optimizer)
    params[0].grad = torch.ones(3, 3, dtype=torch.float64)
    opt.zero_grad()
    assert params[0].grad is None
    extra = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt.add_param_group({"params": [extra], "weight_decay": 0.0, "control": False})
    assert len(opt.optimizer.param_groups) == 2 and opt.param_groups[1]["control"] is False
    assert opt.param_groups[1]["schedule_step"] == 0
    groups_before = len(opt.param_groups)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):  # refused before either optimizer changes
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "rate": 2.0})
    assert len(opt.param_groups) == len(opt.optimizer.param_groups) == groups_before
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        NormControl(params)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        NormControl(torch.optim.SGD(one_group(make_params()), lr=0.1), rate=3.0)
    with pytest.raises(ValueError, match="needs an inner optimizer with weight_decay"):
        CorrectedDecay(torch.optim.Rprop(make_params()), normalized=True)


def test_lion_first_step_and_against_a_reference_loop():
    params = make_params(shapes=[(4, 4)])
    theta0 = params[0].detach().clone()
    opt = Lion(params, lr=0.01, betas=(0.9, 0.99), weight_decay=0.5)
    g = torch.randn(4, 4, dtype=torch.float64)
    params[0].grad = g
    opt.step()
    torch.testing.assert_close(params[0].detach(), theta0 * (1 - 0.01 * 0.5) - 0.01 * g.sign(), rtol=0, atol=0)

    got, _ = run(lambda p: Lion(p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1), shapes=[(5, 3), (4,)])
    ref = make_params(shapes=[(5, 3), (4,)])
    m = [torch.zeros_like(p) for p in ref]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(100):
            for p, mi in zip(ref, m):
                grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.mul_(1 - 1e-3 * 0.1)
                p.sub_(1e-3 * (0.9 * mi + 0.1 * grad).sign())
                mi.mul_(0.99).add_(0.01 * grad)
    assert_same([p.detach() for p in ref], got, exact=False, rtol=1e-12, atol=1e-12)


def test_create_optimizer_names_and_wrapped_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in available_optimizers():
            opt = create_optimizer(model, name, weight_decay=0.05)
            assert isinstance(opt, torch.optim.Optimizer)
    opt = create_optimizer(model, "lion+wn", target=1.5, lr=3e-4)
    assert isinstance(opt, NormControl) and isinstance(opt.optimizer, Lion)
    # norm control replaces the decay where it controls; the output layer keeps the base optimizer's
    assert all(g["weight_decay"] == (0.0 if g["control"] else g["weight_decay"]) for g in opt.param_groups)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups if not g["control"]}["output"] == 0.1
    assert opt.param_groups[0]["target"] == 1.5 and opt.param_groups[0]["lr"] == 3e-4
    with pytest.raises(ValueError, match="unknown optimizer 'adamq'"):
        create_optimizer(model, "adamq")


def _train_model(model, optimizer, gen: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(16, 4, generator=gen)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: NormControl(torch.optim.Adam(one_group(m.parameters()), lr=1e-2), target=0.8, rate=0.1),
        lambda m: NormControl(
            torch.optim.Adam(one_group(m.parameters()), lr=1e-2), target=0.8, rate=0.1, scope="global"
        ),
        lambda m: CorrectedDecay(torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.5), normalized=True),
    ],
    ids=["normcontrol-tensor", "normcontrol-global", "corrected-decay"],
)
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_wrapper_through_distributed_checkpoint(make, tmp_path):
    """The wrappers' state dicts go through torch.distributed.checkpoint like a torch
    optimizer's, and taking them (DCP's zero-gradient, lr-0 step) changes nothing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def build(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
        return model, make(model)

    model, opt = build(0)
    gen = torch.Generator().manual_seed(1)
    _train_model(model, opt, gen, 4)
    trained = [t.clone() for t in [*model.parameters(), *state_tensors(opt.optimizer), *state_tensors(opt)]]
    schedule = [g.get("schedule_step") for g in opt.param_groups]
    model_state, optim_state = get_state_dict(model, opt)
    get_state_dict(model, opt)  # a second checkpoint in the same run
    assert_same(trained, [*model.parameters(), *state_tensors(opt.optimizer), *state_tensors(opt)])
    assert [g.get("schedule_step") for g in opt.param_groups] == schedule
    assert set(optim_state) == {"state", "param_groups"}  # keyed by parameter name, as for torch's
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp_path))
    data = gen.get_state()
    _train_model(model, opt, gen, 4)

    resumed, opt2 = build(7)
    initial = [p.clone() for p in resumed.parameters()]
    model_state, optim_state = get_state_dict(resumed, opt2)  # creates the state: a step 0 checkpoint
    assert_same(initial, list(resumed.parameters()))
    assert all(g.get("schedule_step", 0) == 0 for g in opt2.param_groups)
    loaded = {"model": model_state, "optimizer": optim_state}
    dcp.load(loaded, checkpoint_id=str(tmp_path))
    set_state_dict(resumed, opt2, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    assert opt2.param_groups is opt2.optimizer.param_groups
    gen.set_state(data)
    _train_model(resumed, opt2, gen, 4)
    assert_same(list(model.parameters()), list(resumed.parameters()))
    assert_same(state_tensors(opt.optimizer), state_tensors(opt2.optimizer))
    assert_same(state_tensors(opt), state_tensors(opt2))


def test_wrapper_state_dict_is_one_optimizer_state_dict():
    def make(params):
        return NormControl(torch.optim.Adam(one_group(params), lr=1e-2), target=1.5, rate=0.1)

    _, opt = run(make, steps=2, shapes=[(3, 3), (4,)])
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups"}
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "normctl_init_norm"}
    assert state["param_groups"][0]["target"] == 1.5 and state["param_groups"][0]["betas"] == (0.9, 0.999)
    fresh = make(make_params(shapes=[(3, 3), (4,)]))
    fresh.load_state_dict(state)
    assert set(fresh.optimizer.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert fresh.param_groups[0]["schedule_step"] == 2


one_pass_kernel = pytest.mark.skipif(
    __import__("normctl.optim._one_pass_cpu", fromlist=["kernel"]).kernel() is None,
    reason="the one-pass CPU kernel is not built here",
)


class SubclassedAdam(torch.optim.Adam):
    """Not torch's own Adam: the wrapper leaves its step to it (the generic path)."""


@one_pass_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_wrapped_torch_adam_takes_adamwns_one_pass_kernel(dtype, scope):
    kw = dict(target=schedules.linear_ramp(1.0, 1.6, 20), rate=0.1, scope=scope)
    ref, _ = run(lambda p: AdamWN(one_group(p), lr=1e-2, **kw), scheduler=cosine(), dtype=dtype, steps=40)
    got, opt = run(
        lambda p: NormControl(torch.optim.Adam(one_group(p), lr=1e-2), **kw), scheduler=cosine(), dtype=dtype, steps=40
    )
    assert all(torch.equal(a, b) for a, b in zip(ref, got))  # the same kernel, the same factors
    assert opt._kept_norms._entries  # the kernel's norms served the steps after the first
    generic, _ = run(
        lambda p: NormControl(SubclassedAdam(one_group(p), lr=1e-2), **kw), scheduler=cosine(), dtype=dtype, steps=40
    )
    if dtype == torch.float32:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, generic))
    else:  # bfloat16: the three passes round θ in between, the kernel once; both against float64
        exact, _ = run(lambda p: NormControl(SubclassedAdam(one_group(p), lr=1e-2), **kw), scheduler=cosine(), steps=40)
        error = [float((a.double() - e).abs().max()) if e.numel() else 0.0 for a, e in zip(got, exact)]
        generic_error = [float((b.double() - e).abs().max()) if e.numel() else 0.0 for b, e in zip(generic, exact)]
        assert sum(error) < sum(generic_error) and max(error) < 0.05
    for state in opt.optimizer.state.values():  # torch's own Adam state, as torch would have made it
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"].dtype == torch.float32
        assert float(state["step"]) == 40 and state["exp_avg"].dtype == dtype


@one_pass_kernel
def test_wrapped_adam_resumes_bit_identically_and_its_inner_optimizer_steps_on():
    import copy

    def make(p):
        return NormControl(torch.optim.Adam(one_group(p), lr=1e-2), target=1.3, rate=0.05)

    def train(resume_at=None):
        params = make_params(torch.float32)
        opt = make(params)
        for step in range(30):
            g = torch.Generator().manual_seed(1000 + step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            opt.step()
            if step == resume_at:  # as through a file: a fresh optimizer, no shared tensors
                saved = copy.deepcopy(opt.state_dict())
                opt = make(params)
                opt.load_state_dict(saved)
        return params, opt

    (whole, _), (resumed, opt) = train(), train(resume_at=14)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))
    opt.optimizer.step()  # torch's Adam continues from the state the kernel kept


@one_pass_kernel
@pytest.mark.parametrize(
    "inner",
    [
        lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, maximize=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["amsgrad", "maximize", "weight_decay"],
)
def test_wrapped_adam_with_other_settings_steps_through_torch(inner):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "both shrink the weights"
        opt = NormControl(inner(make_params(torch.float32)), target=1.2)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert not opt._kept_norms._entries


@one_pass_kernel
def test_wrapped_adam_steps_uncontrolled_groups_with_torchs_fused_kernel():
    def groups(params):
        return [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "control": False},
        ]

    ref, _ = run(lambda p: AdamWN(groups(p), lr=1e-2, target=1.4, weight_decay=0.0), dtype=torch.float32, steps=30)
    got, opt = run(
        lambda p: NormControl(torch.optim.Adam(groups(p), lr=1e-2), target=1.4), dtype=torch.float32, steps=30
    )
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(ref, got))
    # the controlled tensors took the one-pass kernel (their norms kept), the others torch's fused
    # Adam: one call, no norms to keep, and the inner optimizer's state advanced as torch would
    controlled, free = opt.param_groups
    assert all(p in opt._kept_norms._entries for p in controlled["params"])
    assert not any(p in opt._kept_norms._entries for p in free["params"])
    assert all(int(opt.optimizer.state[p]["step"]) == 30 for p in free["params"])


class SubclassedSGD(torch.optim.SGD):
    """Not torch's own SGD: the wrapper leaves its step to it (the generic path)."""


@one_pass_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "sgd", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.8, dampening=0.1)]
)
def test_wrapped_torch_sgd_takes_the_one_pass_kernel(dtype, sgd):
    kw = dict(target=schedules.linear_ramp(1.0, 1.6, 20), rate=0.1)
    got, opt = run(lambda p: NormControl(torch.optim.SGD(one_group(p), lr=0.05, **sgd), **kw), dtype=dtype, steps=40)
    generic, generic_opt = run(
        lambda p: NormControl(SubclassedSGD(one_group(p), lr=0.05, **sgd), **kw), dtype=dtype, steps=40
    )
    assert opt._kept_norms._entries and not generic_opt._kept_norms._entries
    if dtype == torch.float32:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, generic))
        for p, q in zip(opt.param_groups[0]["params"], generic_opt.param_groups[0]["params"]):
            ours, theirs = opt.optimizer.state[p]["momentum_buffer"], generic_opt.optimizer.state[q]["momentum_buffer"]
            assert ours.dtype == dtype and torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    else:  # bfloat16: the kernel rounds once per step, the three passes after each
        exact, _ = run(lambda p: NormControl(SubclassedSGD(one_group(p), lr=0.05, **sgd), **kw), steps=40)
        error = [float((a.double() - e).abs().max()) if e.numel() else 0.0 for a, e in zip(got, exact)]
        generic_error = [float((b.double() - e).abs().max()) if e.numel() else 0.0 for b, e in zip(generic, exact)]
        assert sum(error) <= 1.1 * sum(generic_error)


@one_pass_kernel
def test_wrapped_sgd_without_momentum_steps_through_torch():
    opt = NormControl(torch.optim.SGD(one_group(make_params(torch.float32)), lr=0.1), target=1.2)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert not opt._kept_norms._entries


@one_pass_kernel
def test_the_wrapper_says_which_path_its_step_takes_without_changing_anything():
    params = make_params(torch.float32)
    for p in params:
        p.grad = torch.ones_like(p)
    plain = NormControl(torch.optim.Adam(one_group(params), lr=1e-2))
    assert plain.step_path().startswith("one_pass") and not plain.optimizer.state  # looked at in a copy
    assert NormControl(torch.optim.Adam(one_group(params), lr=1e-2, amsgrad=True)).step_path().startswith("generic")
    assert NormControl(SubclassedAdam(one_group(params), lr=1e-2)).step_path().startswith("generic — Eq. 3 as a scale")
    assert NormControl(Lion(one_group(params), lr=1e-4)).step_path().startswith("generic")


@pytest.mark.skipif(torch.__version__ >= (2, 14), reason="torch 2.14 fixed its CPU fused SGD for bfloat16")
def test_wrapping_a_defective_fused_torch_sgd_warns():
    """torch < 2.14's CPU fused SGD skips most of a bfloat16 update (pytorch/pytorch#191763)."""
    weights = [torch.nn.Parameter(torch.randn(64).bfloat16())]
    with pytest.warns(UserWarning, match="191763"):
        NormControl(torch.optim.SGD(one_group(weights), lr=0.1, momentum=0.9, fused=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NormControl(torch.optim.SGD(one_group(weights), lr=0.1, momentum=0.9, foreach=True))
        NormControl(torch.optim.SGD(one_group([torch.nn.Parameter(torch.randn(64))]), lr=0.1, fused=True))
