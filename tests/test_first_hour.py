"""What a newcomer and a practitioner write in their first hour, checked against torch.optim:
torch's idioms for param groups, frozen layers, and the other everyday cases of a training script."""

from __future__ import annotations

import pytest
import torch
from helpers import one_group
from torch import nn

import normctl


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


GROUPED = {
    "AdamC": lambda groups: normctl.AdamC(groups, lr=1e-2),
    "AdamWN": lambda groups: normctl.AdamWN(groups, lr=1e-2),
    "SGDC": lambda groups: normctl.SGDC(groups, lr=1e-2),
    "Lion": lambda groups: normctl.Lion(groups, lr=1e-3),
}


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_a_group_given_a_generator_keeps_its_parameters_as_torch_does(name):
    model = _model()
    groups = [
        {"params": model[0].parameters()},  # torch users' most common way to write groups
        {"params": list(model[1].parameters()) + list(model[2].parameters())},
    ]
    optimizer = GROUPED[name](groups)
    reference = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 4]
    assert [len(g["params"]) for g in reference.param_groups] == [2, 2]
    before = model[0].weight.detach().clone()
    _train(model, optimizer, 2)
    assert not torch.equal(before, model[0].weight)  # the first group trains
    with pytest.raises(ValueError, match="more than one parameter group"):
        GROUPED[name]([{"params": model[0].parameters()}, {"params": model[0].parameters()}])


@pytest.mark.parametrize("scope", ["group", "global"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_a_frozen_layer_is_never_changed_by_a_group_or_global_scope(scope, wrapped):
    model = _model()
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    params = [p for p in model.parameters()]  # frozen ones included, as model.parameters() gives them
    kwargs = dict(target=1.5, rate=0.1, scope=scope)
    if wrapped:
        optimizer = normctl.NormControl(torch.optim.Adam(one_group(params), lr=1e-2), **kwargs)
    else:
        optimizer = normctl.AdamWN([{"params": params, "control": True}], lr=1e-2, **kwargs)
    _train(model, optimizer, 5)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters()))


def test_errors_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(TypeError, match=r"model must be the nn.Module itself \(param_groups\(model\)\), got generator"):
        normctl.param_groups(_model().parameters())
    from normctl.cli import main

    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "does_not_exist")])
    assert "does_not_exist does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "file")])
    assert "is a file" in capsys.readouterr().err


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        g = torch.Generator().manual_seed(step)
        loss = model(torch.randn(16, 6, generator=g, dtype=torch.float64)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


SWITCHES = {
    # each coincides with the source optimizer at these settings, so the switched run must equal the uninterrupted one
    "AdamC": (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: normctl.AdamC([{"params": ps, "normalized": True}], lr=1e-2, weight_decay=0.1),
    ),
    "AdamWN": (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: normctl.AdamWN(one_group(ps), lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr"),
    ),
    "SGDC": (
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-3),
        lambda ps: normctl.SGDC([{"params": ps, "normalized": True}], lr=1e-2, momentum=0.9, weight_decay=1e-3),
    ),
    "CorrectedDecay": (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: normctl.CorrectedDecay(torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1), normalized=True),
    ),
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switching_from_torch_mid_run_keeps_the_moments_and_equals_the_uninterrupted_run(name):
    make_source, make_target = SWITCHES[name]
    torch.manual_seed(0)
    uninterrupted = _model().double()
    switched = _model().double()
    reference = make_source(list(uninterrupted.parameters()))
    _steps(uninterrupted, reference, 0, 40)
    source = make_source(list(switched.parameters()))
    _steps(switched, source, 0, 20)
    target = make_target(list(switched.parameters()))
    said = target.continue_from(source)
    assert "kept:" in said and ("exp_avg" in said or "momentum_buffer" in said)
    _steps(switched, target, 20, 40)
    for a, b in zip(uninterrupted.parameters(), switched.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_continue_from_states_what_it_initialises_and_refuses_what_does_not_fit():
    model = _model()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, adamw, 3)
    adamwn = normctl.AdamWN(one_group(model.parameters()), lr=1e-2, target=1.0)
    said = adamwn.continue_from(adamw.state_dict())
    assert "init_norm" in said and "exp_avg_sq" in said
    _train(model, adamwn, 1)
    with pytest.raises(ValueError, match="needs a fresh optimizer"):
        adamwn.continue_from(adamw)
    with pytest.raises(ValueError, match=r"hold \[4\] tensors, this optimizer's \[6\]"):
        normctl.AdamC(model.parameters(), lr=1e-2).continue_from(torch.optim.AdamW(list(model.parameters())[2:]))
    with pytest.raises(TypeError, match="needs a torch optimizer or its state_dict"):
        normctl.AdamC(model.parameters(), lr=1e-2).continue_from([1, 2])


def test_another_optimizers_tensor_state_under_this_ones_groups_is_refused_at_load():
    # an edited state dict: a fresh AdamWN's groups with AdamW's per-tensor state loaded, then a
    # KeyError at the next step; now refused at load, naming the way that works
    model = _model()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, adamw, 2)
    adamwn = normctl.AdamWN(one_group(model.parameters()), lr=1e-2)
    edited = {"state": adamw.state_dict()["state"], "param_groups": adamwn.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match=r"lacks \['init_norm'\].*continue_from"):
        adamwn.load_state_dict(edited)
    assert not adamwn.state


def test_a_wrapper_whose_inner_groups_were_replaced_refuses_to_step_and_schedulers_see_inner_settings():
    model = _model()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    _train(model, adamw, 2)
    wrapped = normctl.NormControl(torch.optim.AdamW(one_group(model.parameters()), lr=1e-2, weight_decay=0.0))
    wrapped.optimizer.load_state_dict(adamw.state_dict())  # the natural workaround before continue_from
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="param groups were replaced"):
        _train(model, wrapped, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the supported way keeps one set of groups, so a scheduler moves the lr the inner optimizer steps with
    wrapped = normctl.NormControl(torch.optim.AdamW(one_group(model.parameters()), lr=1e-2, weight_decay=0.0))
    wrapped.continue_from(adamw)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(wrapped, max_lr=0.1, total_steps=10)  # needs betas
    _train(model, wrapped, 1)
    scheduler.step()
    assert wrapped.param_groups is wrapped.optimizer.param_groups
    assert wrapped.optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    sgd = normctl.CorrectedDecay(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    torch.optim.lr_scheduler.CyclicLR(sgd, base_lr=0.01, max_lr=0.1)  # needs momentum


def test_the_plain_call_controls_and_decays_matrices_only_and_says_so():
    model = _model()
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    with pytest.warns(UserWarning, match=r"2 tensor\(s\) with 2 or more dimensions are controlled; 4 with fewer"):
        optimizer = normctl.AdamWN(model.parameters(), lr=1e-2)
    controlled, plain = optimizer.param_groups
    assert controlled["control"] and controlled["params"] == matrices
    assert not plain["control"] and plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])
    # explicit groups keep full control: their author decides
    assert len(normctl.AdamWN([{"params": model.parameters()}], lr=1e-2).param_groups) == 1
    with pytest.warns(UserWarning, match=r"NormControl\(Adam\) over plain parameters"):
        wrapped = normctl.NormControl(torch.optim.Adam(model.parameters(), lr=1e-2))
    assert [g["control"] for g in wrapped.param_groups] == [True, False]
    assert wrapped.param_groups is wrapped.optimizer.param_groups


def test_the_plain_call_at_target_zero_is_torch_adamw_with_the_same_split():
    # AdamW is AdamWN's τ = 0 case, over the split every mature trainer uses
    twin, model = _model().double(), _model().double()
    matrices = [p for p in twin.parameters() if p.dim() >= 2]
    vectors = [p for p in twin.parameters() if p.dim() < 2]
    reference = torch.optim.AdamW(
        [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1
    )
    optimizer = normctl.AdamWN(model.parameters(), lr=1e-2, target=0.0, rate=0.1, rate_scaling="lr")
    wrapped_model = _model().double()
    wrapped = normctl.NormControl(
        torch.optim.AdamW(wrapped_model.parameters(), lr=1e-2, weight_decay=0.0),
        target=0.0,
        rate=0.1,
        rate_scaling="lr",
    )
    for m, o in ((twin, reference), (model, optimizer), (wrapped_model, wrapped)):
        _steps(m, o, 0, 20)
    for a, b, c in zip(twin.parameters(), model.parameters(), wrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


TARGETS = [
    normctl.schedules.target_from_adamw(2.0, 5),
    normctl.schedules.cosine(1.0, 2.0, 10, warmup=2),
    normctl.schedules.piecewise_linear([(0, 1.0), (5, 2.0)]),
    normctl.schedules.constant(1.2),
    normctl.AutoTarget(steps=2),
    "auto",
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: type(t).__name__)
def test_every_normctl_state_loads_with_weights_only(tmp_path, target):
    import io

    from normctl.monitor import NormMonitor

    model = _model()
    built = {
        "AdamWN": normctl.AdamWN(model.parameters(), lr=1e-2, target=target, rate=normctl.schedules.constant(0.1)),
        "NormControl": normctl.NormControl(torch.optim.Adam(model.parameters(), lr=1e-2), target=target),
    }
    for name, optimizer in built.items():
        monitor = NormMonitor(model, optimizer, every=1)
        _train(model, optimizer, 3)
        monitor.observe()
        saved = {"optimizer": optimizer.state_dict(), "monitor": monitor.state_dict()}
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)  # torch's default since 2.6, and the Trainer's
        assert loaded["optimizer"]["param_groups"][0]["target"] == optimizer.param_groups[0]["target"], name
        optimizer.load_state_dict(loaded["optimizer"])
        monitor.load_state_dict(loaded["monitor"])


def test_describe_says_what_each_group_of_the_built_optimizer_gets():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    rows = lambda text: {line.split()[0]: line for line in text.splitlines()[2:]}  # noqa: E731
    with pytest.warns(UserWarning):
        plain = rows(normctl.AdamWN(model.parameters(), lr=1e-3, target=1.5).describe())
    assert "controlled" in plain["matrices"] and "r = 1.5×‖θ_0‖" in plain["matrices"] and "3 (224)" in plain["matrices"]
    assert " plain " in plain["vectors"] and "gains, biases (plain call)" in plain["vectors"]
    auto = rows(
        normctl.AdamWN(normctl.param_groups(model), lr=1e-3, target=normctl.AutoTarget(total_steps=500)).describe()
    )
    assert "AdamW's norm by step 500" in auto["decay"] and "one ratio" not in auto["decay"]
    shared = normctl.AutoTarget(total_steps=500, shared_ratio=True)
    one_ratio = rows(normctl.AdamWN(normctl.param_groups(model), lr=1e-3, target=shared).describe())
    assert "AdamW's norm by step 500, one ratio for every tensor" in one_ratio["decay"]
    held = rows(normctl.AdamWN(normctl.param_groups(model), lr=1e-3, target="auto").describe())
    assert "the norm AdamW had after 200 steps" in held["decay"]  # without the run's length it holds
    adamc = rows(normctl.AdamC(normctl.param_groups(model), lr=1e-3, weight_decay=0.1).describe())
    assert "corrected" in adamc["normalized"] and "λ = 0.1 × γ_t/γ_max" in adamc["normalized"]
    assert " decayed " in adamc["decay"] and " plain " in adamc["no_decay"]
    wrapped = normctl.NormControl(torch.optim.AdamW(normctl.param_groups(model), weight_decay=0), target=0.0, rate=0.1)
    assert wrapped.describe().startswith("NormControl(AdamW)")
    assert "AdamW decay at rate 0.1" in rows(wrapped.describe())["decay"]
    sgdc = rows(normctl.SGDC(normctl.param_groups(model, weight_decay=1e-4), lr=0.1).describe())
    assert "corrected" in sgdc["normalized"]
    assert "decayed" in rows(normctl.Lion(model.parameters(), lr=1e-4, weight_decay=0.1).describe())["group"]


def test_under_torch_compile_no_step_takes_the_cpp_kernel(monkeypatch):
    from normctl.optim import _inner_one_pass, _one_pass_cpu

    if _one_pass_cpu.kernel() is None:
        pytest.skip("the C++ kernel is not built here")
    model = _model()
    adamwn = normctl.AdamWN(normctl.param_groups(model), lr=1e-2)
    wrapped = normctl.NormControl(torch.optim.Adam(normctl.param_groups(_model()), lr=1e-2))
    _train(model, adamwn, 1)
    assert any(c and c.path.value == "cpu_one_pass" for c in adamwn.step_paths())  # eager: the kernel
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not any(c and c.path.value == "cpu_one_pass" for c in adamwn.step_paths())
    from normctl.optim._base import collect_batches

    assert _inner_one_pass.plan("adam", collect_batches(wrapped.param_groups, "t"), wrapped.optimizer.state) is None
