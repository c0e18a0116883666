"""Muon: torch's and normctl's (MuonAdamW, MuonC, "muon+wn") — the step against torch's, the groups,
the steady-state norm with decoupled decay, the monitor's forecast and target="auto" of it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import normctl
from normctl import NormMonitor, rules

Muon = getattr(torch.optim, "Muon", None)
needs_torch_muon = pytest.mark.skipif(Muon is None, reason="torch.optim.Muon needs torch >= 2.9")

LR, DECAY = 0.05, 0.4  # decay's time scale 1/(2γλ) = 25 steps


def _noise_run(momentum: float, steps: int = 600, monitor_every: int | None = None):
    """Muon on one 32 × 16 matrix with independent N(0, 1) gradients: per step ‖u‖ (the update per
    unit of lr without the decay), cos(θ, −u) and ‖θ‖."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(32, 16) * 0.02)
    opt = Muon([weight], lr=LR, weight_decay=DECAY, momentum=momentum)
    monitor = NormMonitor(torch.nn.ParameterList([weight]), opt, every=monitor_every) if monitor_every else None
    sizes, cosines, norms = [], [], []
    for _ in range(steps):
        weight.grad = torch.randn_like(weight)
        before = weight.detach().clone()
        opt.step()
        if monitor is not None:
            monitor.observe()
        step = weight.detach() - (1 - LR * DECAY) * before
        sizes.append(float(step.norm()) / LR)
        cosines.append(float((before * step).sum() / (before.norm() * step.norm())))
        norms.append(float(weight.detach().norm()))
    return sizes, cosines, norms, monitor


def _mean(values):
    return sum(values) / len(values)


@needs_torch_muon
@pytest.mark.parametrize("momentum", [0.0, 0.95])
def test_the_steady_norm_with_the_measured_cosine_is_muons(momentum):
    sizes, cosines, norms, _ = _noise_run(momentum)
    settled = slice(-300, None)  # 12 time scales in
    update_norm = math.sqrt(_mean([u * u for u in sizes[settled]]))
    predicted = rules.decayed_steady_norm(update_norm, LR, DECAY, _mean(cosines[settled]))
    assert predicted == pytest.approx(_mean(norms[settled]), rel=0.03)
    orthogonal = rules.decayed_steady_norm(update_norm, LR, DECAY)  # ⟨θ, u⟩ = 0: AdamW's closed form
    assert orthogonal == pytest.approx(rules.adamw_equilibrium_norm(update_norm**2, LR, DECAY), rel=1e-12)
    if momentum == 0:  # independent updates: orthogonal on average, the closed form holds
        assert abs(_mean(cosines[settled])) < 0.02
        assert orthogonal == pytest.approx(_mean(norms[settled]), rel=0.03)
    else:  # momentum aligns successive updates with the weight they built: far above the closed form
        assert _mean(cosines[settled]) > 0.05 and _mean(norms[settled]) > 2 * orthogonal


@needs_torch_muon
def test_the_monitor_forecasts_muons_norm_from_its_first_steps():
    _, _, _, monitor = _noise_run(0.95, steps=150, monitor_every=5)
    record = monitor.group_records[-1]
    assert record["group/0/weight_decay"] == DECAY and record["group/0/update_size"] > 0
    (forecast,) = monitor.forecast(600)  # the constant lr held: where the long run settles
    (measured,) = monitor.forecast(600, source="updates")  # from the update's size and cosine
    _, _, long_norms, _ = _noise_run(0.95)
    torch.manual_seed(0)
    initial = float((torch.randn(32, 16) * 0.02).norm())  # the weight _noise_run starts from
    assert measured.cosine > 0.05  # momentum-built updates point outward: without it the forecast falls short
    for f in (forecast, measured):
        assert f.norm_ratio_end * initial == pytest.approx(_mean(long_norms[-300:]), rel=0.1)


class Block(nn.Module):
    """An embedding, a pre-LN residual MLP and an untied head: every kind of tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.norm = nn.LayerNorm(16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.head = nn.Linear(16, 20, bias=False)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.down(torch.relu(self.up(self.norm(h))))
        return self.head(h)


def _loss(model, seed: int):
    tokens = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(seed))
    return nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())


def _train(model, optimizer, steps: int, start: int = 0, scheduler=None) -> None:
    for step in range(start, start + steps):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@needs_torch_muon
@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_adamw_is_torchs_muon_plus_torchs_adamw_bit_for_bit(adjust_lr_fn, nesterov):
    torch.manual_seed(0)
    model = Block()
    twin = copy.deepcopy(model)
    groups = normctl.param_groups(model, weight_decay=0.1, muon=True)
    ours = normctl.MuonAdamW(groups, lr=0.01, adjust_lr_fn=adjust_lr_fn, nesterov=nesterov)
    twin_params = dict(twin.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    muon_groups, adam_groups = [], []
    for group in groups:
        params = [twin_params[names[id(p)]] for p in group["params"]]
        (muon_groups if group["muon"] else adam_groups).append(
            {"params": params, "weight_decay": group["weight_decay"]}
        )
    muon = Muon(muon_groups, lr=0.01, adjust_lr_fn=adjust_lr_fn, nesterov=nesterov)
    adamw = torch.optim.AdamW(adam_groups, lr=0.01, fused=True)
    for step in range(8):
        for m in (model, twin):
            m.zero_grad()
            _loss(m, step).backward()
        ours.step()
        muon.step()
        adamw.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


def test_param_groups_send_hidden_matrices_to_muon_and_the_rest_to_adam():
    model = Block()
    groups = {g["name"]: g for g in normctl.param_groups(model, muon=True)}
    names = {id(p): n for n, p in model.named_parameters()}

    def held(name):
        return sorted(names[id(p)] for p in groups[name]["params"])

    assert held("normalized_muon") == ["down.weight", "up.weight"]
    assert held("decay") == ["embed.weight"] and held("output") == ["head.weight"]  # Adam's, decayed
    assert {groups[n]["muon"] for n in groups} == {True, False} and not groups["decay"]["muon"]
    assert all(p.dim() == 2 for g in groups.values() if g["muon"] for p in g["params"])


def test_plain_parameters_are_split_by_dimension_with_one_warning():
    model = Block()
    with pytest.warns(UserWarning, match="embeddings and the output layer") as caught:
        optimizer = normctl.MuonAdamW(model.parameters(), lr=1e-3)
    assert len(caught) == 1
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["matrices"]["muon"] and len(by_name["matrices"]["params"]) == 4
    assert not by_name["vectors"]["muon"] and by_name["vectors"]["weight_decay"] == 0.0


def test_a_group_that_mixes_dimensions_or_asks_muon_for_a_vector_is_refused_and_nothing_changes():
    model = Block()
    optimizer = normctl.MuonAdamW([{"params": [model.up.weight], "muon": True}], lr=1e-3)
    with pytest.raises(ValueError, match="mixes 1 2-d tensor"):
        optimizer.add_param_group({"params": [model.down.weight, model.down.bias]})
    with pytest.raises(ValueError, match="muon=True needs 2-d tensors"):
        optimizer.add_param_group({"params": [model.down.bias], "muon": True})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(TypeError, match="weight_dacay"):
        normctl.MuonAdamW([model.up.weight], weight_dacay=0.1)
    with pytest.raises(TypeError, match="max_lr"):
        normctl.MuonAdamW([model.up.weight], max_lr=0.1)  # MuonC's, not MuonAdamW's
    for bad, message in [
        ({"momentum": 1.0}, "momentum"),
        ({"adjust_lr_fn": "rms"}, "adjust_lr_fn"),
        ({"ns_steps": 0}, "ns_steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            normctl.MuonAdamW([model.up.weight], **bad)


def test_muonc_corrects_the_decay_of_normalised_groups_by_the_lr_ratio():
    """MuonC at γ_t equals MuonAdamW with λ·γ_t/γ_max on the normalised groups, step by step under a
    cosine schedule; at the peak they coincide."""
    torch.manual_seed(0)
    model = Block()
    twin = copy.deepcopy(model)
    corrected = normctl.MuonC(normctl.param_groups(model, weight_decay=0.5, muon=True), lr=0.02)
    groups = normctl.param_groups(twin, weight_decay=0.5, muon=True)
    plain = normctl.MuonAdamW(groups, lr=0.02)
    lrs = [0.02 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]
    for step, lr in enumerate(lrs):
        for opt in (corrected, plain):
            for group in opt.param_groups:
                group["lr"] = lr
        for group in plain.param_groups:
            if group["normalized"]:
                group["weight_decay"] = 0.5 * lr / 0.02
        for m in (model, twin):
            m.zero_grad()
            _loss(m, step).backward()
        corrected.step()
        plain.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert "Muon, corrected" in corrected.describe() and "Adam, decayed" in corrected.describe()


@pytest.mark.parametrize("name", ["muon", "muonc", "muon+wn"])
def test_named_muon_optimizers_resume_from_a_weights_only_checkpoint(tmp_path, name):
    """Built by name over param_groups(model, muon=True); saved after 3 steps, loaded with
    torch.load(weights_only=True) into a fresh optimizer, 3 more steps equal an uninterrupted run."""
    torch.manual_seed(0)
    model = Block()
    resumed_model = copy.deepcopy(model)
    kwargs = {"target": "auto"} if name == "muon+wn" else {}
    optimizer = normctl.create_optimizer(model, name, lr=0.01, **kwargs)
    assert any(g.get("muon") for g in optimizer.param_groups) and not all(g.get("muon") for g in optimizer.param_groups)
    _train(model, optimizer, 3)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pt")
    _train(model, optimizer, 3, start=3)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed = normctl.create_optimizer(resumed_model, name, lr=0.01, **kwargs)
    resumed.load_state_dict(saved["optimizer"])
    _train(resumed_model, resumed, 3, start=3)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


@needs_torch_muon
def test_target_auto_on_muon_finds_the_norm_decayed_muon_settles_at():
    """NormControl over MuonAdamW with target='auto' (λ_ref = the decay Muon would have): its window
    measures ‖u‖ and the alignment momentum gives the updates, and the target lands within 10 % of
    the norm the decayed Muon run settles at, which the a = 0 form misses by about 5×. The window
    (150 steps) must outlast the momentum's warm-up (1/(1 − μ) = 20 steps), whose first updates
    are less alike: with 50 steps the target fell 19 % short."""
    _, _, norms, _ = _noise_run(0.95)
    settled = _mean(norms[-300:])
    targets = {}
    for aligned in (True, False):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(32, 16) * 0.02)
        auto = normctl.AutoTarget(weight_decay=DECAY, steps=150, total_steps=600, alignment=aligned)
        inner = normctl.MuonAdamW(
            [{"params": [weight], "muon": True}], lr=LR, weight_decay=0.0, adjust_lr_fn="original"
        )
        optimizer = normctl.NormControl(inner, target=auto)
        for _ in range(150):
            weight.grad = torch.randn_like(weight)
            optimizer.step()
        targets[aligned] = float(optimizer.state[weight]["auto_target"])
    assert targets[True] == pytest.approx(settled, rel=0.1)
    assert targets[False] < 0.4 * settled


def test_a_sharded_matrix_in_a_muon_group_is_refused_before_any_state():
    """FSDP2 shards each matrix across ranks; Newton–Schulz needs it whole (a one-process mesh)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = nn.Parameter(distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)]))
        optimizer = normctl.MuonAdamW([{"params": [weight], "muon": True}], lr=1e-3)
        weight.grad = distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)])
        before = weight.detach().full_tensor().clone()
        with pytest.raises(ValueError, match="orthogonalises each matrix whole"):
            optimizer.step()
        assert not optimizer.state and torch.equal(weight.detach().full_tensor(), before)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["muon", "muonc", "muon+wn"])
def test_the_lab_trains_the_muon_methods_with_muons_split(tmp_path, method):
    """normctl-lab's GPT under each Muon method: its groups from param_groups(model, muon=True), a
    finite loss after a few steps, and the Muon groups in the run's records."""
    from normctl_lab.config import RunConfig, with_overrides
    from normctl_lab.train import _build_optimizer, build_task, train

    tiny = ["task=gpt", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "steps=6", "monitor_every=2"]
    cfg = with_overrides(RunConfig(), [*tiny, f"method={method}"])
    optimizer = _build_optimizer(cfg, build_task(cfg).model)
    assert {g["muon"] for g in optimizer.param_groups} == {True, False}
    final = train(cfg, tmp_path / "run", verbose=False)
    assert math.isfinite(final["val_loss"]) and "group/normalized_muon/norm_ratio" in final["norm_ratio"]


def test_the_monitor_records_and_forecasts_muonadamws_groups():
    """Both parts of MuonAdamW are decoupled decay: the monitor records each group's update size,
    cosine and λ, and forecasts every decayed group; the Muon groups are predicted as Muon."""
    from normctl.monitor import stats

    torch.manual_seed(0)
    model = Block()
    optimizer = normctl.MuonC(normctl.param_groups(model, weight_decay=0.1, muon=True), lr=0.01)
    monitor = NormMonitor(model, optimizer, every=2)
    for step in range(20):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
        monitor.observe()
    record = monitor.group_records[-1]
    for label in ("normalized_muon", "decay"):
        assert record[f"group/{label}/update_size"] > 0 and record[f"group/{label}/weight_decay"] == pytest.approx(0.1)
    families = {g["name"]: stats.predict(optimizer, g).family for g in optimizer.param_groups}
    assert families == {"normalized_muon": "muon", "decay": "adam", "output": "adam", "no_decay": "adam"}
    forecasts = {f.group for f in monitor.forecast(200)}
    assert {"normalized_muon", "decay"} <= forecasts
