"""What a newcomer and a practitioner write in their first hour, checked against torch.optim:
torch's idioms for param groups, frozen layers, and the other everyday cases of a training script."""

from __future__ import annotations

import pytest
import torch
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
        optimizer = normctl.NormControl(torch.optim.Adam(params, lr=1e-2), **kwargs)
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
