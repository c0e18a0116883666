"""normctl's optimizers through timm's optimizer factory (``make test-timm`` runs these in an
environment with timm; timm needs torchvision, which has no CPU build for the torch the main
environment pins)."""

from __future__ import annotations

import warnings

import pytest
import torch

import normctl
from normctl.integrations import timm as normctl_timm

timm = pytest.importorskip("timm")
from timm.optim import create_optimizer_v2  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    return normctl_timm.register()


def model(name: str = "test_resnet") -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5)


def train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_name_is_in_timms_registry():
    assert set(timm.optim.list_optimizers()) >= set(normctl_timm.OPTIMIZERS)


def test_adamwn_from_timms_groups_controls_the_tensors_with_two_or_more_dimensions():
    net = model()
    optimizer = create_optimizer_v2(net, "adamwn", lr=1e-3, weight_decay=0.05, target=1.2, rate=0.1)
    assert isinstance(optimizer, normctl.AdamWN)
    for group in optimizer.param_groups:
        assert all((p.dim() >= 2) == group["control"] for p in group["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))
    # the same steps as AdamWN built by hand over the same split
    reference_net = model()
    groups = normctl_timm.control_by_shape(
        timm.optim.param_groups_weight_decay(reference_net, weight_decay=0.05)  # timm's own grouping
    )
    reference = normctl.AdamWN(groups, lr=1e-3, target=1.2, rate=0.1, weight_decay=0.05)
    assert same(train(net, optimizer), train(reference_net, reference))


@pytest.mark.parametrize("name", ["adamwn", "adamc", "sgdc", "adam+wn", "adamw+c", "sgd+c"])
def test_with_normctl_param_groups_timm_builds_what_create_optimizer_builds(name):
    """param_group_fn=normctl.param_groups: normctl's own groups (control, normalized) go through."""
    kwargs = dict(lr=1e-2 if "sgd" in name else 1e-3)
    net, reference_net = model(), model()
    groups = lambda m: normctl.param_groups(m, weight_decay=0.05)  # noqa: E731
    optimizer = create_optimizer_v2(net, name, param_group_fn=groups, **kwargs)
    if "sgd" in name:
        kwargs["momentum"] = 0.9  # timm's default momentum
    reference = normctl.create_optimizer(reference_net, name, weight_decay=0.05, **kwargs)
    assert type(optimizer) is type(reference)
    assert same(train(net, optimizer), train(reference_net, reference))


@pytest.mark.parametrize("name", ["muonc", "muon+wn"])
def test_muon_names_split_timms_groups_by_dimension_and_take_normctls_muon_groups(name):
    """Without param_group_fn each timm group's 2-d tensors step by Muon and the rest by Adam; with
    normctl.param_groups(m, muon=True) timm builds what create_optimizer builds."""
    net, reference_net = model(), model()
    optimizer = create_optimizer_v2(net, name, lr=1e-3, weight_decay=0.05)
    groups = normctl_timm.by_dimension(timm.optim.param_groups_weight_decay(reference_net, weight_decay=0.05))
    assert {g["muon"] for g in optimizer.param_groups} == {True, False}
    assert all((p.dim() == 2) == g["muon"] for g in optimizer.param_groups for p in g["params"])
    factory = normctl_timm.OPTIMIZERS[name].factory
    reference = factory(groups, lr=1e-3, weight_decay=0.05)
    assert same(train(net, optimizer), train(reference_net, reference))
    net, reference_net = model(), model()
    muon_groups = lambda m: normctl.param_groups(m, weight_decay=0.05, muon=True)  # noqa: E731
    optimizer = create_optimizer_v2(net, name, lr=1e-3, param_group_fn=muon_groups)
    reference = normctl.create_optimizer(reference_net, name, weight_decay=0.05, lr=1e-3)
    assert type(optimizer) is type(reference)
    assert same(train(net, optimizer), train(reference_net, reference))


def test_corrected_decay_without_normctl_groups_says_it_corrects_nothing():
    with pytest.warns(UserWarning, match="no param group has normalized=True"):
        create_optimizer_v2(model(), "adamc", lr=1e-3, weight_decay=0.05)


def test_layer_decay_groups_are_accepted():
    """timm's layer-wise lr decay puts an lr_scale in every group; its schedulers read it."""
    net = model("test_vit")
    optimizer = create_optimizer_v2(net, "adamwn", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert all("lr_scale" in g for g in optimizer.param_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ViT's zero-initialised tensors are left uncontrolled, with a warning
        x = torch.randn(2, 3, *net.default_cfg["input_size"][1:])
        net(x).sum().backward()
        optimizer.step()


def test_sgd_wrapped_in_norm_control_through_timm():
    optimizer = create_optimizer_v2(model(), "sgd+wn", lr=0.05, target=1.1)
    assert isinstance(optimizer, normctl.NormControl) and isinstance(optimizer.optimizer, torch.optim.SGD)
    assert optimizer.optimizer.param_groups[0]["momentum"] == 0.9


def test_unknown_names_are_refused_before_anything_is_registered():
    with pytest.raises(ValueError, match="names: unknown"):
        normctl_timm.register(names=["adamwn", "adamwx"])
