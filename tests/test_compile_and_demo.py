"""torch.compile of a training step, and the demo end to end on a few steps."""

import dataclasses
import json

import pytest
import torch
from normctl_lab.cli import main
from normctl_lab.demo import DemoConfig, run_demo

from normctl import SGDC, AdamC, AdamWN, Lion, param_groups


def test_compiled_training_step_matches_eager():
    torch._dynamo.reset()

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
        return model, AdamWN(param_groups(model), lr=1e-2, target=1.5, rate=0.1)

    x, y = torch.randn(32, 8), torch.randn(32, 1)
    results = []
    for compiled in (False, True):
        model, opt = make()

        def train_step():
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        step = torch.compile(train_step) if compiled else train_step
        losses = [float(step().detach()) for _ in range(5)]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (comp_losses, comp_params) = results
    assert comp_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_params, comp_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_demo_runs_every_method_on_every_seed_and_reports_mean_and_std(capsys, tmp_path):
    from normctl_lab.demo import claims, format_results, what_it_shows

    out_dir = tmp_path / "demo"
    cfg = dataclasses.replace(
        DemoConfig(), steps=12, n_layer=1, n_embd=32, eval_batches=2, warmup=2, seeds=(0, 1), out_dir=str(out_dir)
    )
    results = run_demo(cfg)
    assert (out_dir / "report.html").is_file() and (out_dir / "adamwn_s1" / "metrics.jsonl").is_file()
    assert (out_dir / "figure.png").is_file() and len(
        json.loads((out_dir / "adamc_s0" / "ratio_by_step.json").read_text())
    ) == 12
    layers = json.loads((out_dir / "adamc_s0" / "layer_ratio_by_step.json").read_text())
    assert len(layers) > 1 and {len(ratios) for ratios in layers} == {12}  # each normalised layer, every step
    assert [(r.method, r.seed) for r in results] == [(m, s) for s in (0, 1) for m in ("adamw", "adamwn", "adamc")]
    for r in results:
        assert all(
            map(
                torch.isfinite,
                map(
                    torch.tensor,
                    (r.val_loss, r.train_loss, r.norm_ratio, r.grad_rise, r.ratio_rise, r.norm_drift, r.layer_rise),
                ),
            )
        )
    adamw = {r.seed: r.norm_ratio for r in results if r.method == "adamw"}
    out = capsys.readouterr().out
    for seed, ratio in adamw.items():  # AdamWN's target is its own seed's AdamW ratio
        assert f"adamwn, seed {seed}: target ratio AdamW's {ratio:.3f} on this seed" in out
    table = format_results(results)
    losses = [r.val_loss for r in results if r.method == "adamc"]
    mean, std = sum(losses) / 2, abs(losses[0] - losses[1]) / 2**0.5
    assert f"{mean:.4f} ± {std:.4f}" in table.splitlines()[3]  # AdamC's row
    assert table in out and what_it_shows(cfg) in out
    for line in claims(results):  # one line per claim, with the seeds that agree
        assert line in out
    adamw = {r.seed: r for r in results if r.method == "adamw"}
    rose = sum(adamw[s].layer_rise >= 1.25 for s in (0, 1))
    assert f"AdamW rose on {rose} of 2 seeds" in out
    summary = json.loads((out_dir / "summary.json").read_text())  # the table's numbers, for quoting
    assert summary["methods"]["adamc"]["val_loss"]["mean"] == pytest.approx(mean)
    assert summary["methods"]["adamc"]["val_loss_by_seed"] == {
        str(r.seed): r.val_loss for r in results if r.method == "adamc"
    }
    assert summary["methods"]["adamwn"]["norm_drift_by_seed"] == {
        str(r.seed): r.norm_drift for r in results if r.method == "adamwn"
    }
    assert summary["claims"] == claims(results)
    report = (out_dir / "report.html").read_text()  # its first figure is the demo's
    assert report.index("of the normalised layers, the median layer: AdamW") < report.index("Training loss (mean")
    records = [json.loads(line) for line in (out_dir / "adamc_s0" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["normalized_layers/median_grad_weight_ratio"] > 0 for r in records)  # what that chart draws
    assert (out_dir / "adamc_s1" / "environment.json").is_file()
    assert json.loads((out_dir / "adamc_s1" / "final.json").read_text()) == dataclasses.asdict(results[-1])


def test_cli_rejects_bad_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,x"], "seeds must be comma-separated integers"),
        (["--budgets", "1.5,two"], "budgets must be comma-separated numbers"),
        (["--budgets", "0.5"], "budgets must be factors > 1"),
    ],
)
def test_cli_repro_gpt_rejects_bad_lists(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["repro-gpt", "--out", str(tmp_path / "repro"), *argv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repro").exists()


def test_a_diverging_method_keeps_the_demos_results(tmp_path, capsys):
    """A run whose loss goes NaN (SGD at an absurd lr) used to stop the table with an exception
    after every run had trained, before summary.json and the report were written."""
    import math

    from normctl_lab.paired import finite_stats

    cfg = dataclasses.replace(
        DemoConfig(),
        steps=8,
        n_layer=1,
        n_embd=32,
        eval_batches=1,
        warmup=1,
        seeds=(0, 1),
        lr=50.0,
        methods=("adamw", "sgd"),
        out_dir=str(tmp_path / "demo"),
    )
    results = run_demo(cfg)
    assert all(math.isnan(r.val_loss) for r in results if r.method == "sgd")

    def refuse(constant):
        raise ValueError(f"a file holds {constant}, which is not JSON")

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["methods"]["sgd"]["val_loss"]["mean"] is None  # every seed diverged: no mean, strict JSON
    assert summary["methods"]["sgd"]["val_loss"]["nonfinite"] == 2 and (tmp_path / "demo" / "report.html").is_file()
    (sgd_row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sgd ")]
    assert sgd_row.split()[2] == "diverged"  # the table says so instead of failing
    final = json.loads((tmp_path / "demo" / "sgd_s0" / "final.json").read_text(), parse_constant=refuse)
    assert final["val_loss"] is None  # a diverged run's record is strict JSON, as the harness's are
    stats = finite_stats([1.0, math.nan, 3.0])
    assert (stats["mean"], stats["n"], stats["nonfinite"]) == (2.0, 2, 1)


def _scheduled_run(make_optimizer, lr, steps, *, compile_backend=None):
    """``steps`` steps of a small LayerNorm net under CosineAnnealingLR; the weights after each."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    opt = make_optimizer(param_groups(model, control_output=True), lr)  # every matrix on the path under test
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step = torch.compile(opt.step, backend=compile_backend) if compile_backend else opt.step
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(4, 8, generator=data)).square().mean().backward()
        step()
        opt.zero_grad()
        scheduler.step()
    return opt, torch.cat([p.detach().flatten() for p in model.parameters()])


OPTIMIZERS = {
    "AdamWN": lambda groups, lr: AdamWN(groups, lr=lr, target=1.5, rate=0.05),
    "AdamC": lambda groups, lr: AdamC(groups, lr=lr, weight_decay=0.1),
    "SGDC": lambda groups, lr: SGDC(groups, lr=lr, momentum=0.9, weight_decay=1e-2),
    "Lion": lambda groups, lr: Lion(groups, lr=lr, weight_decay=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_tensor_lr_steps_as_its_number_and_stays_the_schedulers_tensor(name, tmp_path):
    make = OPTIMIZERS[name]
    lr = torch.tensor(1e-2, dtype=torch.float64)  # float32 would round each scheduled lr, as in torch
    opt, with_tensor = _scheduled_run(make, lr, 20)
    _, with_float = _scheduled_run(make, 1e-2, 20)
    torch.testing.assert_close(with_tensor, with_float, rtol=0, atol=0)
    assert opt.param_groups[-1]["lr"] is lr and lr.item() == pytest.approx(with_cosine(1e-2, 20, 20))
    assert opt.param_groups[-1]["construction_lr"] == pytest.approx(1e-2)  # a number, not the moving tensor
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    assert torch.load(tmp_path / "opt.pt", weights_only=True)["param_groups"][0]["lr"] == lr


def with_cosine(base, t, total):
    import math

    return base * (1 + math.cos(math.pi * t / total)) / 2


@pytest.mark.parametrize(
    "bad", [torch.tensor([1e-3, 1e-3]), torch.tensor(1e-3, requires_grad=True), torch.tensor(-1.0)]
)
def test_a_bad_tensor_lr_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="lr"):
        AdamWN(torch.nn.Linear(2, 2).parameters(), lr=bad)


@pytest.mark.parametrize("name", ["AdamWN", "AdamC"])
def test_a_compiled_step_under_a_scheduler_compiles_no_new_graph_after_its_first_steps(name):
    """torch's recipe: a tensor lr, so that the scheduler's new lr is data. The first step makes the
    state eagerly (one graph break) and the second recompiles once for the state it now finds;
    from then on no step compiles anything, and the weights follow the eager run's."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    make = OPTIMIZERS[name]
    compiled_after = {}
    for steps in (3, 50):
        torch._dynamo.reset()
        graphs.clear()
        _, weights = _scheduled_run(make, torch.tensor(1e-2), steps, compile_backend=counting_backend)
        compiled_after[steps] = len(graphs)
        _, eager = _scheduled_run(make, torch.tensor(1e-2), steps)
        torch.testing.assert_close(weights, eager, rtol=1e-5, atol=1e-6)
    assert compiled_after[50] == compiled_after[3] > 0
