"""target="auto": each rule against its closed form, the state round trip, and the monitor."""

import copy
import math

import pytest
import torch
from helpers import one_group
from torch import nn

import normctl
from normctl import AdamWN, AutoTarget, NormControl
from normctl.monitor import MemorySink
from normctl.rules import adamw_equilibrium_norm


def test_the_equilibrium_norm_balances_adamw_decay_and_updates():
    lr, wd, update_sq = 3e-3, 0.1, 57.0
    norm = adamw_equilibrium_norm(update_sq, lr, wd)
    # one AdamW step from ‖θ*‖ with an update orthogonal to θ returns to ‖θ*‖
    assert (1 - lr * wd) ** 2 * norm**2 + lr**2 * update_sq == pytest.approx(norm**2, rel=1e-12)
    assert norm == pytest.approx(math.sqrt(lr / (2 * wd) * update_sq), rel=lr * wd)


@pytest.mark.parametrize("path", [dict(), dict(foreach=False)], ids=["default", "reference"])
def test_equilibrium_rule_is_adamw_while_it_measures_then_targets_the_closed_form(path):
    """A constant gradient makes Adam's update sign(g)·|g|/(|g| + ε): ‖u‖² = n, known exactly."""
    w = torch.randn(10, 10, dtype=torch.float64)
    p, q = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    auto = AutoTarget(weight_decay=0.2, steps=50, multiple=1.5, without_length="asymptotic")
    optimizer = AdamWN([p], lr=1e-2, target=auto, rate=0.05, **path)
    adamw = torch.optim.AdamW([q], lr=1e-2, weight_decay=0.2, foreach=False)
    for _ in range(50):
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        optimizer.step()
        adamw.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)  # the measuring window is AdamW
    expected = 1.5 * math.sqrt(1e-2 * 100 / (0.2 * (2 - 1e-2 * 0.2)))
    assert float(optimizer.state[p]["auto_target"]) == pytest.approx(expected, rel=1e-7)  # ε = 1e-8 in u
    norm = p.detach().norm().item()
    p.grad = torch.zeros_like(p)
    optimizer.step()  # from now on Eq. 3 pulls the norm toward the target (Adam's moments still act)
    assert not torch.allclose(p, q)
    assert 0 < float(optimizer.state[p]["auto_target"]) < norm


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_equilibrium_rule_measures_the_updates_alignment_with_the_weight(scope):
    """A constant gradient keeps Adam's update u = 1 in every element, so the weights drift along
    −u: a = Σ⟨θ_{t−1}, −u_t⟩/γ ÷ Σ‖u_t‖² > 0, and the target is the fixed point with it (over the
    scope's tensors together), a computed here from AdamW's own twin."""
    torch.manual_seed(0)
    shapes = [(6, 5), (7,)]
    weights = [0.1 * torch.randn(shape, dtype=torch.float64) for shape in shapes]
    params = [nn.Parameter(w.clone()) for w in weights]
    twins = [nn.Parameter(w.clone()) for w in weights]
    auto = AutoTarget(weight_decay=0.2, steps=30, without_length="asymptotic", alignment=True)
    optimizer = AdamWN(one_group(params), lr=1e-2, target=auto, scope=scope)
    adamw = torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.2, foreach=False)
    inner = [0.0, 0.0]
    for _ in range(30):
        for i, twin in enumerate(twins):  # u = 1 exactly (up to ε): ⟨θ, −u⟩ = −Σθ
            inner[i] += -float(twin.detach().sum()) / 1e-2
        for p in params + twins:
            p.grad = torch.ones_like(p)
        optimizer.step()
        adamw.step()
    sizes = [math.prod(shape) for shape in shapes]
    for unit in [[0], [1]] if scope == "tensor" else [[0, 1]]:
        update_sq = sum(sizes[i] for i in unit)
        alignment = sum(inner[i] for i in unit) / (30 * update_sq)
        assert alignment > 1  # the drift along −u, which the a = 0 form leaves out
        expected = normctl.rules.aligned_steady_norm(update_sq, 1e-2, 0.2, alignment)
        if scope == "tensor":
            got = float(optimizer.state[params[unit[0]]]["auto_target"])
        else:
            got = optimizer.param_groups[0]["auto_target"]
        assert got == pytest.approx(expected, rel=1e-6)
        assert got > 1.5 * normctl.rules.adamw_equilibrium_norm(update_sq, 1e-2, 0.2)


def test_the_aligned_step_is_the_decayed_step_at_the_inner_product_it_implies():
    """aligned_norm_sq_after is decayed_norm_sq_after with c·‖θ‖·‖u‖ = γ·a·‖u‖² at every step, and
    its fixed point is aligned_steady_norm; a < 0 counts as 0."""
    lr, decay, update_sq, alignment = 0.02, 0.1, 9.0, 3.0
    norm_sq = 4.0
    for _ in range(50):
        cosine = lr * alignment * update_sq / (math.sqrt(norm_sq) * math.sqrt(update_sq))
        step = normctl.rules.decayed_norm_sq_after(norm_sq, update_sq, [(lr, decay)], cosine)
        assert normctl.rules.aligned_norm_sq_after(norm_sq, update_sq, [(lr, decay)], alignment) == pytest.approx(
            step, rel=1e-12
        )
        norm_sq = step
    settled = normctl.rules.aligned_norm_sq_after(1.0, update_sq, [(lr, decay)] * 20000, alignment)
    assert math.sqrt(settled) == pytest.approx(normctl.rules.aligned_steady_norm(update_sq, lr, decay, alignment))
    assert normctl.rules.aligned_steady_norm(update_sq, lr, decay, -2.0) == normctl.rules.adamw_equilibrium_norm(
        update_sq, lr, decay
    )


def test_equilibrium_rule_over_a_scope_uses_the_scopes_update():
    params = [nn.Parameter(torch.randn(4, 4, dtype=torch.float64)), nn.Parameter(torch.randn(9, dtype=torch.float64))]
    optimizer = AdamWN(
        one_group(params),
        lr=1e-2,
        target=AutoTarget(steps=5, without_length="asymptotic"),
        scope="global",
    )
    for _ in range(5):
        for p in params:
            p.grad = -torch.ones_like(p)
        optimizer.step()
    expected = math.sqrt(1e-2 * 25 / (0.1 * (2 - 1e-3)))  # 16 + 9 elements, |u_i| = 1
    assert optimizer.param_groups[0]["auto_target"] == pytest.approx(expected, rel=1e-7)
    assert not any("auto_target" in s and not math.isnan(float(s["auto_target"])) for s in optimizer.state.values())


def test_shared_ratio_holds_every_tensor_at_the_groups_one_ratio():
    """AutoTarget(shared_ratio=True): the group's target is the scope rule's (the same closed form
    as scope="global" over the same tensors), and each tensor's is that one ratio of its own
    initial norm; a tensor with no gradient when the ratio was set takes it at its first one."""
    torch.manual_seed(0)
    weights = [torch.randn(4, 4, dtype=torch.float64), 3 * torch.randn(9, dtype=torch.float64)]
    late = nn.Parameter(torch.randn(5, dtype=torch.float64))
    params = [nn.Parameter(w.clone()) for w in weights]
    auto = AutoTarget(steps=5, without_length="asymptotic", shared_ratio=True)
    optimizer = AdamWN(one_group([*params, late]), lr=1e-2, target=auto)
    scoped = [nn.Parameter(w.clone()) for w in weights]
    scope = AdamWN(one_group(scoped), lr=1e-2, target=AutoTarget(steps=5, without_length="asymptotic"), scope="global")
    for _ in range(5):
        for p in params + scoped:
            p.grad = -torch.ones_like(p)
        optimizer.step()
        scope.step()
    tau = scope.param_groups[0]["auto_target"]
    assert tau == pytest.approx(math.sqrt(1e-2 * 25 / (0.1 * (2 - 1e-3))), rel=1e-7)
    initial = [w.norm().item() for w in weights]
    targets = [float(optimizer.state[p]["auto_target"]) for p in params]
    assert targets == pytest.approx([tau * n / math.hypot(*initial) for n in initial], rel=1e-7)
    assert late not in optimizer.state  # no gradient yet: no state, nothing measured
    start = late.detach().norm().item()
    late.grad = torch.ones_like(late)
    optimizer.step()
    assert float(optimizer.state[late]["auto_target"]) == pytest.approx(targets[0] / initial[0] * start, rel=1e-12)


class Scripted(torch.optim.Optimizer):
    """Sets the weight's norm to ``norms[t]`` at step t: a known trajectory for the inflection rule."""

    def __init__(self, params, norms):
        super().__init__(params, {"lr": 1.0})
        self.norms, self.t = norms, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.t += 1
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(self.norms[self.t] / p.norm())


def test_inflection_rule_holds_the_norm_where_its_growth_first_slows():
    """‖θ_t‖² grows at an accelerating rate until step 230, then more slowly; with ema=0 the rule
    sees ‖θ‖² itself every 50 steps, so the closed form is the first interval end whose growth is
    smaller than the previous interval's."""
    steps, interval = 400, 50
    norm_sq = [
        1 + (t / 100) ** 2 if t <= 230 else 1 + 2.3**2 + 2 * 2.3 * (t - 230) / 100 * 0.5 for t in range(steps + 1)
    ]
    norms = [math.sqrt(v) for v in norm_sq]
    p = nn.Parameter(torch.ones(4, dtype=torch.float64))
    p.data.mul_(norms[0] / p.norm())
    optimizer = NormControl(
        Scripted(one_group([p]), norms), target=AutoTarget(rule="inflection", interval=interval, ema=0.0)
    )
    chosen = None
    for t in range(1, steps + 1):
        p.grad = torch.zeros_like(p)
        optimizer.step()
        tau = float(optimizer.state[p]["auto_target"])
        if chosen is None and not math.isnan(tau):
            chosen = (t, tau)
    growth = {k: norm_sq[k * interval] - norm_sq[(k - 1) * interval] for k in range(2, steps // interval + 1)}
    first = next(k for k in range(3, steps // interval + 1) if growth[k] < growth[k - 1])
    assert chosen is not None and chosen[0] == first * interval
    assert chosen[1] == pytest.approx(norms[first * interval], rel=1e-12)


def test_inflection_rule_trains_freely_until_it_decides():
    w = torch.randn(6, 6)
    p, q = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    optimizer = AdamWN([p], lr=1e-2, target=AutoTarget(rule="inflection", interval=1000))
    adam = torch.optim.Adam([q], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        grad = torch.randn(6, 6, generator=g)
        p.grad, q.grad = grad.clone(), grad.clone()
        optimizer.step()
        adam.step()
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["equilibrium", "inflection"])
@pytest.mark.parametrize("scope", ["tensor", "global", "shared"])
def test_a_resume_in_the_middle_of_the_measurement_continues_exactly(rule, scope):
    # "shared": tensor scope with one ratio for every tensor of a group
    auto = AutoTarget(rule=rule, steps=20, interval=5, ema=0.5, shared_ratio=scope == "shared")
    scope = "tensor" if scope == "shared" else scope

    def make(model):
        return AdamWN(
            normctl.param_groups(model, weight_decay=0.1, control_output=True),
            lr=1e-2,
            target=auto,
            rate=0.1,
            scope=scope,
        )

    def train(model, optimizer, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(8, 6, generator=g, dtype=torch.float64)).square().mean().backward()
            optimizer.step()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.Linear(12, 2)).double()
    resumed_model = copy.deepcopy(model)
    optimizer = make(model)
    train(model, optimizer, 12, seed=1)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    train(model, optimizer, 30, seed=2)

    resumed_model.load_state_dict(saved[0])
    resumed = make(resumed_model)
    resumed.load_state_dict(saved[1])
    train(resumed_model, resumed, 30, seed=2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    if rule == "equilibrium":  # chosen at step 20, after the resume
        if scope == "tensor":
            taus = [float(s["auto_target"]) for s in optimizer.state.values() if "auto_target" in s]
        else:
            taus = [g["auto_target"] for g in optimizer.param_groups if g["control"]]
        assert len(taus) == 2 and all(math.isfinite(t) for t in taus)


def test_an_n01_embedding_gets_a_target_below_its_initial_norm():
    """PyTorch's default embedding init, N(0, 1), is far above the norm AdamW's decay keeps: the
    equilibrium rule follows AdamW down instead of holding the initial norm."""
    torch.manual_seed(0)
    embedding = nn.Embedding(64, 32)
    initial = embedding.weight.detach().norm().item()
    optimizer = AdamWN(one_group(embedding.parameters()), lr=1e-3, target=AutoTarget(without_length="asymptotic"))
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        optimizer.zero_grad()
        embedding(torch.randint(0, 64, (16,), generator=g)).sum().backward()
        optimizer.step()
    tau = float(optimizer.state[embedding.weight]["auto_target"])
    assert 0 < tau < 0.5 * initial


def test_the_monitor_shows_the_chosen_target():
    p = nn.Parameter(torch.randn(5, 5))
    optimizer = AdamWN([p], lr=1e-2, target=AutoTarget(steps=3))
    sink = MemorySink()
    with normctl.NormMonitor(nn.ParameterList([p]), optimizer, every=1, sinks=[sink]) as monitor:
        for _ in range(5):
            p.grad = torch.randn_like(p)
            optimizer.step()
            monitor.observe(loss=0.0)
    targets = [r.get("tensor/0/target_norm") for r in sink.records]
    assert targets[:2] == [None, None] and targets[2] == pytest.approx(float(optimizer.state[p]["auto_target"]))


def test_auto_target_settings_are_checked():
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="target must be a number >= 0, a schedule, 'auto' or an AutoTarget"):
        AdamWN([p], target="automatic")
    with pytest.raises(ValueError, match="AutoTarget rule must be one of"):
        AutoTarget(rule="magic")
    with pytest.raises(ValueError, match="AutoTarget weight_decay must be a finite number > 0"):
        AutoTarget(weight_decay=0.0)
    with pytest.raises(ValueError, match="AutoTarget steps must be an integer >= 1"):
        AutoTarget(steps=0)
    with pytest.raises(TypeError, match="AutoTarget shared_ratio must be True or False, got 'yes'"):
        AutoTarget(shared_ratio="yes")
    with pytest.raises(TypeError, match="AutoTarget alignment must be True or False"):
        AutoTarget(alignment=1)
    assert normctl.create_optimizer(nn.Linear(3, 3), "adamwn", target="auto").param_groups[0]["target"] == "auto"


def test_adamw_norm_after_a_run_tends_to_the_equilibrium_and_stays_near_the_start_in_a_short_one():
    from normctl.rules import adamw_norm_sq_after

    long = adamw_norm_sq_after(4.0, 1e4, [1e-2] * 20_000, 0.1)
    assert math.sqrt(long) == pytest.approx(adamw_equilibrium_norm(1e4, 1e-2, 0.1), rel=1e-9)
    assert adamw_norm_sq_after(4.0, 1e4, [], 0.1) == 4.0
    short = adamw_norm_sq_after(4.0, 1e4, [1e-4] * 10, 0.1)  # 10 steps at a tiny lr: barely moves
    assert short == pytest.approx(4.0 * (1 - 1e-5) ** 20 + 10 * 1e-8 * 1e4)


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_auto_target_with_the_runs_length_targets_the_norm_adamw_reaches_in_it(schedule):
    """A run shorter than AdamW's time scale 1/(2γλ) = 500 steps: AdamW's norm at its end is well
    below the asymptotic equilibrium; the run-length-aware target finds it within a few per cent.
    Noise gradients with β1 = 0 make u_t independent of θ (the rule's ⟨θ, u⟩ ≈ 0)."""
    total, lr, decay, window = 400, 1e-2, 0.1, 50
    lr_schedule = None if schedule is None else normctl.schedules.cosine(1.0, 0.0, total)
    weights = torch.randn(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.02

    def run(make):
        p = nn.Parameter(weights.clone())
        optimizer = make([p])
        scheduler = None if lr_schedule is None else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)
        g = torch.Generator().manual_seed(1)
        for _ in range(total):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        return p, optimizer

    adamw, _ = run(lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(0.0, 0.999), weight_decay=decay))
    auto = AutoTarget(weight_decay=decay, steps=window, total_steps=total, lr_schedule=lr_schedule)
    _, optimizer = run(lambda ps: AdamWN([{"params": ps}], lr=lr, betas=(0.0, 0.999), target=auto))
    target = float(optimizer.state[optimizer.param_groups[0]["params"][0]]["auto_target"])
    assert target == pytest.approx(float(adamw.norm()), rel=0.05)
    with pytest.warns(UserWarning, match="asymptotic norm"):
        _, asymptotic = run(
            lambda ps: AdamWN(
                [{"params": ps}],
                lr=lr,
                betas=(0.0, 0.999),
                target=AutoTarget(weight_decay=decay, steps=window, without_length="asymptotic"),
            )
        )
    far = float(asymptotic.state[asymptotic.param_groups[0]["params"][0]]["auto_target"])
    assert far > 1.2 * float(adamw.norm())  # what the rule without the length targeted


def test_without_the_runs_length_the_rule_holds_the_norm_adamw_had_and_says_so():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(64, 32, dtype=torch.float64))
    optimizer = AdamWN([{"params": [p]}], lr=1e-2, target=AutoTarget(steps=5))
    with pytest.warns(UserWarning, match="does not know the run's length"):
        for _ in range(5):
            p.grad = torch.randn_like(p)
            optimizer.step()
    assert float(optimizer.state[p]["auto_target"]) == pytest.approx(float(p.norm()), rel=1e-12)
    with pytest.raises(ValueError, match="without_length must be 'hold' or 'asymptotic'"):
        AutoTarget(without_length="guess")
