"""param_groups: which tensors are controlled, decayed and normalised, and why."""

import pytest
import torch
from normctl_lab.models import GPT, GPTConfig, ResNet
from torch import nn

from normctl import SGDC, AdamC, AdamWN, format_roles, param_groups, param_roles


def roles_by_name(model, **kw):
    return {r.name: r for r in param_roles(model, **kw)}


def test_gpt_transformer_rule_with_tied_weights():
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=16))
    roles = roles_by_name(model)
    assert "lm_head.weight" not in roles  # tied: listed once, under the embedding
    wte = roles["transformer.wte.weight"]
    assert wte.group == "decay" and "tied with lm_head.weight" in wte.reason and not wte.normalized
    for name in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
        assert roles[f"transformer.h.1.{name}"].group == "normalized"
    for name, r in roles.items():
        if "ln_" in name or name.endswith(".bias"):
            assert r.group == "no_decay" and not r.control
    groups = param_groups(model, weight_decay=0.05)
    assert {g["name"]: g["weight_decay"] for g in groups} == {"normalized": 0.05, "decay": 0.05, "no_decay": 0.0}
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_gpt_untied_output_layer_is_decayed_not_normalized():
    model = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=16, tie_weights=False))
    roles = roles_by_name(model, embeddings="no_decay")
    head = roles["lm_head.weight"]
    assert head.group == "output" and "output layer" in head.reason and not head.control and not head.normalized
    assert roles_by_name(model, control_output=True)["lm_head.weight"].group == "decay"  # held, if asked
    assert roles["transformer.wte.weight"].group == "no_decay"


def test_resnet_structural_rule_follows_conv_into_batchnorm():
    model = ResNet(width=4, blocks_per_stage=1)
    roles = roles_by_name(model)
    convs = [n for n in roles if "conv" in n or "downsample.0" in n]
    assert convs and all(roles[n].group == "normalized" for n in convs)
    assert "feeds layers.1.0.downsample.1" in roles["layers.1.0.downsample.0.weight"].reason
    assert roles["fc.weight"].group == "output"
    assert all(roles[n].group == "no_decay" for n in roles if ".bn" in n or n.startswith("bn"))


def test_the_output_layer_is_found_in_any_model_and_can_be_left_to_decay():
    resnet = roles_by_name(ResNet(width=4, blocks_per_stage=1))
    assert resnet["fc.weight"].kind == "output" and not resnet["fc.weight"].control  # left to decay by default
    assert roles_by_name(ResNet(width=4, blocks_per_stage=1), control_output=True)["fc.weight"].control
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    free = roles_by_name(mlp)
    assert free["2.weight"].group == "output" and free["0.weight"].group == "decay"
    assert not free["2.weight"].control and not free["2.weight"].normalized
    groups = {g["name"]: g for g in param_groups(mlp, weight_decay=0.05)}
    assert groups["output"]["weight_decay"] == 0.05 and not groups["output"]["control"]
    # AdamWN leaves the output layer to AdamW's decay: one step equals torch's AdamW on it
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    twin.load_state_dict(mlp.state_dict())
    x = torch.randn(16, 4)
    opt = AdamWN(param_groups(mlp, weight_decay=0.05), lr=1e-2)
    ref = torch.optim.AdamW([twin[2].weight], lr=1e-2, weight_decay=0.05)
    for net, o in ((mlp, opt), (twin, ref)):
        net(x).square().mean().backward()
        o.step()
    torch.testing.assert_close(mlp[2].weight, twin[2].weight, rtol=0, atol=1e-7)


def test_a_last_linear_followed_by_a_norm_is_not_an_output_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    assert roles_by_name(model)["0.weight"].kind != "output"
    with pytest.raises(TypeError, match="control_output"):
        param_groups(model, control_output="no")


def test_arbitrary_module_and_explicit_names():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    roles = roles_by_name(model)
    assert roles["0.weight"].group == "decay"  # feeds a ReLU, not a norm
    assert roles["2.weight"].group == "normalized"  # feeds the LayerNorm
    assert roles["4.weight"].group == "output"  # the last Linear: the output layer
    explicit = roles_by_name(model, normalized={"0.weight"})
    assert explicit["0.weight"].group == "normalized" and explicit["2.weight"].group == "decay"
    none = roles_by_name(model, normalized="none")
    assert not any(r.normalized for r in none.values())


def test_custom_norm_class_is_recognised_by_name():
    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

    model = nn.Sequential(nn.Linear(4, 4, bias=False), RMSNorm(4))
    roles = roles_by_name(model)
    assert roles["1.weight"].group == "no_decay" and roles["0.weight"].group == "normalized"


def test_groups_feed_every_optimizer_and_torch_adamw():
    model = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))
    x = torch.randint(0, 256, (2, 8))
    for make in (AdamWN, AdamC, SGDC, torch.optim.AdamW):
        opt = make(param_groups(model, weight_decay=0.1), lr=1e-3)
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_format_roles_prints_a_table_with_reasons(capsys):
    model = ResNet(width=4, blocks_per_stage=1)
    param_groups(model, verbose=True)
    out = capsys.readouterr().out
    assert "conv1.weight" in out and "output feeds bn1 (BatchNorm2d)" in out
    assert out.strip().splitlines()[-1].startswith("normalized:")
    assert format_roles(param_roles(model)) in out
