"""normctl.check: each finding on a model built to trigger it, and silent on one built not to."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import normctl
from normctl import schedules


def transformerish() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 50))


def whats(findings) -> list[str]:
    return [f.what for f in findings]


def test_decayed_gains_and_biases_are_named_and_param_groups_is_silent():
    model = transformerish()
    found = normctl.check(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    assert any("fewer than 2 dimensions" in w for w in whats(found))
    assert "2.weight" in next(f.evidence for f in found if "fewer than 2" in f.what)
    quiet = normctl.check(torch.optim.AdamW(normctl.param_groups(model), lr=1e-3), model)
    assert not any("fewer than 2 dimensions" in w for w in whats(quiet))
    # without the model: by shape
    assert "(16,)" in next(
        f.evidence for f in normctl.check(torch.optim.AdamW(model.parameters())) if "fewer" in f.what
    )


def test_normalised_layers_not_marked_are_found_for_the_correcting_optimizers():
    model = transformerish()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = normctl.AdamC(model.parameters(), lr=1e-3)
    assert any("corrects nothing" in w for w in whats(normctl.check(plain, model)))
    grouped = normctl.AdamC(normctl.param_groups(model), lr=1e-3)
    assert not any("corrects nothing" in w for w in whats(normctl.check(grouped, model)))


def test_the_decay_time_scale_against_the_runs_length():
    model = transformerish()
    optimizer = torch.optim.AdamW(normctl.param_groups(model), lr=1e-2, weight_decay=0.1)  # 1/(2λγ) = 500
    short = whats(normctl.check(optimizer, model, steps=300))
    assert any("never reaches its steady state" in w for w in short)
    long = normctl.check(optimizer, model, steps=10_000)
    assert any("from about step 1500" in w for w in whats(long))
    assert not any("never reaches" in w for w in whats(long))


def test_the_end_of_run_rise_is_predicted_for_adamw_and_not_for_adamc():
    model = transformerish()
    cosine = schedules.cosine(1.0, 0.0, 10_000)
    adamw = torch.optim.AdamW(normctl.param_groups(model), lr=1e-2, weight_decay=0.1)
    rise = [f for f in normctl.check(adamw, model, steps=10_000, lr_schedule=cosine) if "predicted to rise" in f.what]
    assert len(rise) == 1 and "normalized" in rise[0].what and "AdamC" in rise[0].fix
    adamc = normctl.AdamC(normctl.param_groups(model), lr=1e-2, weight_decay=0.1)
    assert not any("rise" in w for w in whats(normctl.check(adamc, model, steps=10_000, lr_schedule=cosine)))
    constant = schedules.constant(1.0)
    assert not any("rise" in w for w in whats(normctl.check(adamw, model, steps=10_000, lr_schedule=constant)))
    # a run shorter than the time scale never reaches the steady state that would rise
    assert not any("rise" in w for w in whats(normctl.check(adamw, model, steps=300, lr_schedule=cosine)))


def test_muon_users_are_told_the_rise_and_that_muonc_removes_it():
    model = transformerish()
    cosine = schedules.cosine(1.0, 0.0, 10_000)
    muon = normctl.MuonAdamW(normctl.param_groups(model, muon=True), lr=1e-2, weight_decay=0.1)
    rise = [f for f in normctl.check(muon, model, steps=10_000, lr_schedule=cosine) if "predicted to rise" in f.what]
    assert rise and all("MuonC" in f.fix for f in rise)
    muonc = normctl.MuonC(normctl.param_groups(model, muon=True), lr=1e-2, weight_decay=0.1)
    assert not any("rise" in w for w in whats(normctl.check(muonc, model, steps=10_000, lr_schedule=cosine)))


def test_a_norm_controlled_output_layer_is_found():
    model = transformerish()
    held = normctl.AdamWN(normctl.param_groups(model, control_output=True), lr=1e-3)
    assert any("output layer is norm-controlled" in w for w in whats(normctl.check(held, model)))
    groups = normctl.param_groups(model)
    head = model[3].weight
    groups = [{**g, "params": [p for p in g["params"] if p is not head]} for g in groups]
    groups.append({"params": [head], "control": False, "weight_decay": 0.1})
    free = normctl.AdamWN([g for g in groups if g["params"]], lr=1e-3)
    assert not any("output layer" in w for w in whats(normctl.check(free, model)))
    decayed = normctl.AdamWN(normctl.param_groups(model), lr=1e-3)  # the default leaves it to decay
    assert not any("output layer" in w for w in whats(normctl.check(decayed, model)))


def test_check_refuses_what_it_cannot_read_and_prints():
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        normctl.check("adamw")
    model = transformerish()
    with pytest.raises(ValueError, match="steps must be None or an integer >= 1"):
        normctl.check(torch.optim.AdamW(model.parameters()), steps=0)
    text = str(normctl.check(torch.optim.AdamW(model.parameters()), model))
    assert text.startswith("[warning]") and "fix:" in text
    assert str(normctl.check(torch.optim.SGD(model.parameters(), lr=0.1))) == "normctl.check: nothing to report"


def test_a_relative_target_on_a_zero_initialised_matrix_is_named():
    model = transformerish()
    with torch.no_grad():
        model[1].weight.zero_()  # an output projection zero-initialised, as some recipes do
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = normctl.check(normctl.AdamWN(normctl.param_groups(model), lr=1e-3), model)
    (zero,) = [f for f in found if "start at norm 0" in f.what]
    assert zero.evidence == "1.weight" and "uncontrolled" in zero.fix
    quiet = normctl.check(normctl.AdamWN(normctl.param_groups(transformerish()), lr=1e-3), transformerish())
    assert not any("start at norm 0" in w for w in whats(quiet))


def test_target_auto_on_a_run_shorter_than_its_window_is_a_warning():
    model = transformerish()
    optimizer = normctl.AdamWN(normctl.param_groups(model), lr=1e-3, target="auto")
    short = [f for f in normctl.check(optimizer, model, steps=150) if "target='auto'" in f.what]
    assert len(short) == 1 and short[0].severity == "warning" and "AutoTarget(steps=7)" in short[0].fix
    assert not [f for f in normctl.check(optimizer, model, steps=10_000) if "target='auto'" in f.what]


def test_a_target_held_well_below_where_adamw_would_grow_the_tensors_is_found():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        for layer in (small[0], small[2]):
            layer.weight.mul_(0.05)  # a small initialisation, which AdamW's updates outgrow
    held = normctl.AdamWN(normctl.param_groups(small, control_output=False), lr=1e-2)  # target 1.0
    found = [f for f in normctl.check(held, small, steps=5_000) if "would grow them" in f.what]
    assert len(found) == 1 and "0.weight" in found[0].evidence and "AutoTarget(total_steps=5000)" in found[0].fix
    assert "target_from_adamw" in found[0].fix  # the measured recipe first: the forecast falls short of growth
    # silent: a target AdamW would not outgrow, PyTorch's initialisation at a small lr, the automatic target
    loose = normctl.AdamWN(normctl.param_groups(small, control_output=False), lr=1e-2, target=50.0)
    assert not any("would grow" in w for w in whats(normctl.check(loose, small, steps=5_000)))
    default = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    quiet = normctl.AdamWN(normctl.param_groups(default), lr=1e-4)
    assert not any("would grow" in w for w in whats(normctl.check(quiet, default, steps=5_000)))
    auto = normctl.AdamWN(normctl.param_groups(small), lr=1e-2, target="auto")
    assert not any("would grow" in w for w in whats(normctl.check(auto, small, steps=5_000)))
    assert not any("would grow" in w for w in whats(normctl.check(held, small)))  # no length: no prediction
