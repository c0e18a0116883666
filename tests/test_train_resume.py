"""The harness: configs, overrides, and a run killed with SIGKILL resuming exactly."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from helpers import untimed
from normctl_lab.cli import main
from normctl_lab.config import RunConfig, with_overrides
from normctl_lab.sweep import gains_norm_ratio
from normctl_lab.train import train

import normctl
from normctl.report.runs import load_run

SMALL = [
    "task=gpt",
    "steps=240",
    "checkpoint_every=40",
    "monitor_every=5",
    "eval_every=30",
    "n_layer=1",
    "n_embd=64",
    "block_size=32",
    "batch_size=8",
    "method=adamwn",
    "target_ratio=1.3",
]


def test_overrides_and_validation(tmp_path):
    cfg = with_overrides(RunConfig(), ["lr=0.01", "method=sgd+wn", "steps=5"])
    assert (cfg.lr, cfg.method, cfg.steps) == (0.01, "sgd+wn", 5)
    with pytest.raises(ValueError, match="unknown config field 'learning_rate'"):
        with_overrides(cfg, ["learning_rate=1"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        with_overrides(cfg, ["lr"])
    with pytest.raises(ValueError, match="lr must be float"):
        with_overrides(cfg, ["lr=fast"])
    with pytest.raises(ValueError, match="task must be one of"):
        RunConfig(task="imagenet")
    with pytest.raises(ValueError, match="scope must be one of"):
        with_overrides(cfg, ["scope=layer"])
    with pytest.raises(ValueError, match="target_shape must be one of"):
        with_overrides(cfg, ["target_shape=cosine"])
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert RunConfig.from_file(path) == cfg
    gains = with_overrides(cfg, ["control_gains=true", "gains_target_ratio=1.5"])
    assert gains.gains_target_ratio == 1.5
    assert with_overrides(gains, ["gains_target_ratio=none"]).gains_target_ratio is None
    with pytest.raises(ValueError, match="gains_target_ratio needs control_gains"):
        with_overrides(cfg, ["gains_target_ratio=1.5"])
    with pytest.raises(ValueError, match="gains_target_ratio must be >= 0"):
        with_overrides(gains, ["gains_target_ratio=-1"])
    with pytest.raises(ValueError, match="gains_target_ratio must be float"):
        with_overrides(gains, ["gains_target_ratio=big"])
    for bad, message in (
        ("hidden=0", "hidden must be >= 1"),
        ("lr=0", "lr must be > 0"),
        ("lr=nan", "lr must be > 0"),
        ("weight_decay=-0.1", "weight_decay must be >= 0"),
        ("rate=2", r"rate must be in \[0, 1\]"),
        ("activation=tanh", "activation must be one of"),
        ("init=xavier", "init must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            with_overrides(cfg, [bad])


def test_killed_run_resumes_with_identical_metrics(tmp_path):
    cfg = with_overrides(RunConfig(), SMALL)
    reference = train(cfg, tmp_path / "uninterrupted", verbose=False)

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "normctl_lab.cli", "train", "--out", str(run_dir)]
    for assignment in SMALL:
        command += ["--set", assignment]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a loaded machine can take minutes to import torch and reach the checkpoint
    while not (run_dir / "checkpoint.pt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final.json").exists(), "the run finished before it could be killed"
    killed = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert 0 < killed["step"] < cfg.steps and killed["train_seconds"] > 0

    resumed = train(cfg, run_dir, verbose=False)
    assert untimed(resumed) == untimed(reference)
    assert resumed["train_seconds"] > killed["train_seconds"]  # the killed process's seconds, then the resumed one's
    lines = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert lines(run_dir) == lines(tmp_path / "uninterrupted")
    evals = lambda d: (d / "evals.jsonl").read_text().splitlines()  # noqa: E731
    assert evals(run_dir) == evals(tmp_path / "uninterrupted")
    assert len(evals(run_dir)) == cfg.steps // 30
    final_a = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    final_b = torch.load(tmp_path / "uninterrupted" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = with_overrides(RunConfig(), ["steps=3", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=2"])
    train(cfg, tmp_path, verbose=False)
    with pytest.raises(ValueError, match="different config"):
        train(with_overrides(cfg, ["lr=0.1"]), tmp_path, verbose=False)
    assert json.loads((tmp_path / "final.json").read_text())["steps"] == 3


def test_checkpoints_from_before_a_new_config_field_still_resume():
    from normctl_lab.train import _same_config

    cfg = with_overrides(RunConfig(), ["steps=3"])
    saved = json.loads(cfg.to_json())
    del saved["corpus"]  # written before the field existed
    assert _same_config(saved, cfg)
    assert not _same_config(saved, with_overrides(cfg, ["corpus=kjv"]))
    assert not _same_config({**saved, "lr": 0.5}, cfg)


def test_a_run_resumed_from_a_checkpoint_that_kept_no_time_says_its_time_is_unknown(tmp_path):
    from normctl_lab import checkpoint as checkpoints
    from normctl_lab.train import CHECKPOINT

    cfg = with_overrides(RunConfig(), [*SMALL, "steps=20", "checkpoint_every=10", "eval_every=10"])
    assert train(cfg, tmp_path, verbose=False)["train_seconds"] > 0
    # as a checkpoint written before the seconds were kept: the total is unknown, not the resumed part alone
    state = checkpoints.load(tmp_path / CHECKPOINT)
    del state["train_seconds"]
    checkpoints.save(state, tmp_path / CHECKPOINT)
    (tmp_path / "final.json").unlink()
    assert train(cfg, tmp_path, verbose=False)["train_seconds"] is None
    assert json.loads((tmp_path / "final.json").read_text())["train_seconds"] is None


def test_voronoi_task_trains(tmp_path):
    cfg = with_overrides(
        RunConfig(), ["task=voronoi", "steps=4", "hidden=32", "batch_size=64", "schedule=constant", "method=lion+wn"]
    )
    final = train(cfg, tmp_path, verbose=False)
    assert final["test_acc"] == evaluate_checkpoint(cfg, tmp_path)["test_acc"]
    assert (tmp_path / "metrics.jsonl").is_file()


def test_a_resumed_run_keeps_what_it_started_on_and_records_what_changed(tmp_path, monkeypatch):
    from normctl_lab import rundir
    from normctl_lab import train as train_module

    cfg = with_overrides(RunConfig(), ["task=voronoi", "steps=4", "hidden=16", "batch_size=32", "checkpoint_every=2"])
    train(cfg, tmp_path, verbose=False)
    started = json.loads((tmp_path / "environment.json").read_text())
    assert "resumed" not in started and started["torch"] == torch.__version__

    def on_revision(revision):
        monkeypatch.setattr(
            train_module,
            "describe_environment",
            lambda **k: rundir.describe_environment(**k) | {"git_revision": revision},
        )

    on_revision("f" * 40)  # the code changed between the run's start and its resume
    (tmp_path / "final.json").unlink()
    train(cfg, tmp_path, verbose=False)  # continues from the checkpoint at the last step
    on_revision("e" * 40)
    train(cfg, tmp_path, verbose=False)
    train(cfg, tmp_path, verbose=False)  # nothing changed since the last resume
    record = json.loads((tmp_path / "environment.json").read_text())
    assert {k: v for k, v in record.items() if k != "resumed"} == started  # what it started on, kept
    assert record["resumed"] == [
        {"step": 4, "git_revision": "f" * 40},
        {"step": 4, "git_revision": "e" * 40},
        {"step": 4},
    ]


def evaluate_checkpoint(cfg, run_dir):
    """The held-out metrics of the model in the run's last checkpoint, computed afresh."""
    from normctl_lab import checkpoint
    from normctl_lab.train import build_task

    task = build_task(cfg)
    task.model.load_state_dict(checkpoint.load(run_dir / "checkpoint.pt")["model"])
    task.model.eval()
    return task.evaluate(task.model)


def test_sweep_runs_the_grid_then_skips_finished_runs(tmp_path, monkeypatch):
    from normctl_lab import sweep as sweep_module

    base = with_overrides(
        RunConfig(), ["steps=4", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=2", "monitor_every=2"]
    )
    grid = sweep_module.parse_grid(["method=adamw,adamwn"])
    results = sweep_module.run_sweep(base, grid, [0, 1], tmp_path, verbose=False)
    assert sorted(r["label"] for r in results) == ["method=adamw"] * 2 + ["method=adamwn"] * 2
    assert (tmp_path / "report.html").is_file() and (tmp_path / "method-adamwn_s1" / "final.json").is_file()
    # per label, mean ± std over the seeds of what final.json holds, for documents to quote
    labels = json.loads((tmp_path / "summary.json").read_text())["labels"]
    adamw = [r for r in results if r["label"] == "method=adamw"]
    expected = statistics.mean(r["val_loss"] for r in adamw), statistics.stdev(r["val_loss"] for r in adamw)
    assert (labels["method=adamw"]["val_loss"]["mean"], labels["method=adamw"]["val_loss"]["std"]) == expected
    ratio = labels["method=adamwn"]["norm_ratio"]["global/norm_ratio"]
    assert ratio["n"] == 2 and ratio["mean"] == statistics.mean(
        r["norm_ratio"]["global/norm_ratio"] for r in results if r["label"] == "method=adamwn"
    )

    calls = []
    monkeypatch.setattr(sweep_module, "train", lambda *a, **k: calls.append(a))
    again = sweep_module.run_sweep(base, grid, [0, 1], tmp_path, verbose=False)
    assert calls == [] and again == results
    with pytest.raises(ValueError, match="--grid expects"):
        sweep_module.parse_grid(["method"])


def test_a_finished_run_trained_with_another_config_is_refused_not_reported_as_the_one_asked(tmp_path):
    from normctl_lab.sweep import train_runs

    tiny = with_overrides(RunConfig(), ["task=voronoi", "steps=3", "hidden=16", "batch_size=32", "schedule=constant"])
    train_runs([("run", tiny)], tmp_path, verbose=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["auto_run_length"]  # written before the field existed, at its default: the same run
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    assert train_runs([("run", tiny)], tmp_path, verbose=False)[0]["status"] == "finished"
    before = (tmp_path / "run" / "final.json").read_text()
    # the search space changed since (a rule, a fixed field): skipping it would report the old run as the new
    with pytest.raises(ValueError, match=r"(?s)run: lr 0.003 → 0.001.*Move them out"):
        train_runs([("run", with_overrides(tiny, ["lr=1e-3"]))], tmp_path, verbose=False)
    assert (tmp_path / "run" / "final.json").read_text() == before  # nothing changed


def test_runs_in_parallel_processes_finish_and_a_failure_names_its_run(tmp_path, capsys):
    from normctl_lab.sweep import train_runs

    tiny = with_overrides(RunConfig(), ["task=voronoi", "steps=3", "hidden=16", "batch_size=32", "schedule=constant"])
    runs = [(f"run_s{seed}", with_overrides(tiny, [f"seed={seed}"])) for seed in (0, 1)]
    results = train_runs(runs, tmp_path, workers=2)
    assert [r["run"] for r in results] == ["run_s0", "run_s1"] and {r["seed"] for r in results} == {0, 1}
    printed = capsys.readouterr().out  # one line per finished run: its held-out numbers, the count
    for r in results:
        assert (
            f"{r['run']} finished (" in printed
            and f"val_acc {r['val_acc']:.4f}, val_loss {r['val_loss']:.4f}, test_acc {r['test_acc']:.4f}" in printed
        )
    assert "(2 of 2):" in printed and "(1 of 2, ~" in printed  # how long the rest should take
    assert not any(tmp_path.glob("*/request.json"))  # the hand-over files are cleaned up

    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        train_runs(runs, tmp_path, workers=0)
    with pytest.raises(SystemExit):
        main(["sweep", "--workers", "0", "--out", str(tmp_path / "sweep")])
    assert "workers must be an integer >= 1" in capsys.readouterr().err

    (tmp_path / "bad_s0").mkdir()
    (tmp_path / "bad_s0" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # fails in the child
    with pytest.raises(RuntimeError, match="bad_s0 failed"):
        train_runs([("bad_s0", tiny)], tmp_path, workers=2, verbose=False)


def test_a_sweep_run_killed_before_its_first_checkpoint_starts_over_and_only_such_a_run(tmp_path, capsys):
    from normctl_lab.sweep import train_runs

    tiny = with_overrides(RunConfig(), ["task=voronoi", "steps=6", "hidden=16", "batch_size=32", "checkpoint_every=3"])
    tiny = with_overrides(tiny, ["schedule=constant"])
    expected = train_runs([("whole", tiny)], tmp_path, verbose=False)[0]
    run = tmp_path / "killed"
    train(tiny, run, verbose=False)
    written_from_step_3 = ("final.json", "checkpoint.pt", "checkpoint.pt.prev")
    for name in written_from_step_3:  # as if killed before step 3
        (run / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):  # by hand: still refused
        train(tiny, run, verbose=False)
    other = with_overrides(tiny, ["lr=1e-3"])  # another config's records are never deleted
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        train(other, run, verbose=False, restart_unsaved=True)
    assert (run / "metrics.jsonl").is_file()
    for workers in (1, 2):  # in this process and in a child
        for name in written_from_step_3:
            (run / name).unlink(missing_ok=True)
        final = train_runs([("killed", tiny)], tmp_path, workers=workers)[0]
        assert {k: v for k, v in final.items() if k not in ("run", "train_seconds")} == {
            k: v for k, v in expected.items() if k not in ("run", "train_seconds")
        }
    assert "stopped before its first checkpoint; training it from step 0" in capsys.readouterr().out


def test_a_killed_sweep_stops_its_children_at_their_checkpoints(tmp_path):
    # SIGTERM to the sweep (as `kill` sends) stops its worker processes too; before, they trained on
    out = tmp_path / "sweep"
    args = ["sweep", "--set", "task=voronoi", "--set", "hidden=16", "--set", "batch_size=32", "--set", "steps=200000"]
    args += ["--set", "checkpoint_every=50", "--set", "schedule=constant", "--seeds", "0,1", "--workers", "2"]
    script = f"import sys; from normctl_lab.cli import main; sys.exit(main({args + ['--out', str(out)]!r}))"
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    pids = []
    while time.monotonic() < deadline and len(pids) < 2:  # both children training, past a checkpoint
        time.sleep(0.5)
        runs = [d for d in out.glob("*") if (d / "checkpoint.pt").is_file() and (d / ".lock").is_file()]
        pids = [int(held.split()[1]) for d in runs if (held := (d / ".lock").read_text()).startswith("pid")]
    assert len(pids) == 2, sweep.communicate(timeout=60)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "stopped at their last checkpoints" in err and "resume" in err
    for pid in pids:  # the children are gone, not training on
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all((d / "checkpoint.pt").is_file() and not (d / "final.json").exists() for d in runs)  # resumable


def test_time_left_reads_the_pace_so_far():
    from normctl_lab.sweep import headline, time_left

    assert time_left(600.0, 1, 4) == ", ~30 min left" and time_left(3600.0, 2, 6) == ", ~2 h 0 min left"
    assert time_left(5.0, 1, 2) == ", ~1 min left" and time_left(100.0, 3, 3) == ""
    assert (
        headline({"seed": 0, "val_loss": 1.23456, "test_acc": 0.5, "steps": 10}) == "val_loss 1.2346, test_acc 0.5000"
    )
    assert headline({"status": "diverged", "val_loss": None}) == "diverged"


def test_fashion_mnist_sample_and_resnet_task(tmp_path):
    from normctl_lab.data.fashion_mnist import load_fashion_mnist, read_idx

    images, labels = load_fashion_mnist("train")
    assert images.shape == (2000, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert set(labels.tolist()) == set(range(10))
    assert load_fashion_mnist("test")[0].shape == (500, 1, 28, 28)
    with pytest.raises(ValueError, match="IDX"):
        read_idx(b"\x00\x00\x0d\x01")
    cfg = with_overrides(
        RunConfig(), ["task=fmnist", "steps=3", "batch_size=16", "width=4", "method=sgdc", "full_data=false"]
    )
    final = train(cfg, tmp_path, verbose=False)
    assert final["test_acc"] == evaluate_checkpoint(cfg, tmp_path)["test_acc"]
    assert final["test_acc"] * 500 == round(final["test_acc"] * 500)  # a count over the 500 test images


def test_gpt_reproduction_runs_phases_and_summarizes(tmp_path, monkeypatch):
    from normctl_lab import repro_gpt

    tiny = ["task=gpt", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "steps=20", "warmup=2"]
    tiny += ["checkpoint_every=10", "monitor_every=2", "eval_every=10", "device=cpu"]
    monkeypatch.setitem(repro_gpt.SCALES, "tiny", tiny)
    summary = repro_gpt.run_repro(
        tmp_path, [0, 1], "tiny", ablations=True, ablation_seeds=[0], budgets=[1.5], verbose=False
    )
    methods = summary["methods"]
    assert set(methods) == {"adamw", "adamc", "adamwn"}
    ratios = [json.loads((tmp_path / f"method-adamw_s{s}" / "final.json").read_text()) for s in (0, 1)]
    assert len(ratios) == 2 and methods["adamw"]["seeds"] == [0, 1]
    # the tail rise each run stored at full resolution, mean ± std over the seeds
    rises = [r["tail_rise"]["global/grad_norm"] for r in ratios]
    assert methods["adamw"]["tail_rise"]["global/grad_norm"]["mean"] == pytest.approx(statistics.mean(rises))
    # AdamWN's target is AdamW's measured final norm ratio, recorded in its config
    adamwn_config = json.loads((tmp_path / "method-adamwn_s0" / "config.json").read_text())
    assert adamwn_config["target_ratio"] == summary["adamwn_target_ratio"]
    assert summary["adamwn_target_ratio"] == pytest.approx(methods["adamw"]["controlled_norm_ratio"]["mean"], abs=1e-4)
    assert methods["adamwn"]["curve_steps"] == [10, 20]
    # the gains' own target is AdamW's final ratio for them
    own = statistics.mean(gains_norm_ratio(tmp_path / f"method-adamw_s{s}") for s in (0, 1))
    assert (tmp_path / "summary.json").is_file()
    # the ablations: one change to the main AdamWN run each, at the same target
    assert set(summary["ablations"]) == {
        "adamwn (main)",
        "rate=1e-3",
        "rate=1e-1",
        "rate=1",
        "target_shape=constant",
        "target_shape=linear",
        "scope=global",
        "control_gains=true",
        f"control_gains=true,gains_target_ratio={own:.4f}",
    }
    assert summary["ablations"]["scope=global"]["seeds"] == [0]
    assert (tmp_path / "ablations.png").is_file()
    scoped = json.loads((tmp_path / "scope-global_s0" / "config.json").read_text())
    assert (scoped["method"], scoped["scope"]) == ("adamwn", "global")
    assert scoped["target_ratio"] == adamwn_config["target_ratio"]
    # AdamW at 1.5x the steps, with its own schedule over 30 steps, evaluated at its last step
    longer = summary["adamw_budgets"][30]
    assert longer["seeds"] == [0, 1] and longer["curve_steps"] == [10, 20, 30]
    longer_config = json.loads((tmp_path / "steps-30_s1" / "config.json").read_text())
    assert (longer_config["method"], longer_config["steps"], longer_config["warmup"]) == ("adamw", 30, 2)
    points = [(20, methods["adamw"]["val_loss"]["mean"]), (30, longer["val_loss"]["mean"])]
    assert summary["adamw_steps_to_match_adamwn"] == repro_gpt.steps_to_reach(
        points, methods["adamwn"]["val_loss"]["mean"]
    )
    # AdamWN at the longest budget, its target AdamW's norm ratio there
    longest = json.loads((tmp_path / "method-adamwn_steps-30_s0" / "config.json").read_text())
    assert (longest["method"], longest["steps"]) == ("adamwn", 30)
    assert longest["target_ratio"] == pytest.approx(longer["controlled_norm_ratio"]["mean"], abs=1e-4)
    assert summary["adamwn_longest_budget"]["seeds"] == [0, 1]
    assert summary["adamwn_longest_budget"]["curve_steps"] == [10, 20, 30]
    assert (tmp_path / "budgets.png").is_file()


def test_steps_to_reach_interpolates_between_budgets():
    from normctl_lab.repro_gpt import steps_to_reach

    points = [(200, 1.1), (100, 1.3), (150, 1.2)]
    assert steps_to_reach(points, 1.15) == pytest.approx(175)
    assert steps_to_reach(points, 1.3) == 100
    assert steps_to_reach(points, 1.05) is None


def test_budgets_are_validated(tmp_path):
    from normctl_lab import repro_gpt

    with pytest.raises(ValueError, match="budgets must be factors > 1"):
        repro_gpt.run_repro(tmp_path, [0], budgets=[0.5], verbose=False)
    with pytest.raises(ValueError, match="does not train"):
        repro_gpt.run_repro(tmp_path, [0], "steady", budgets=[2], verbose=False)
    with pytest.raises(ValueError, match=r"round to \[2500\] steps"):  # 2 550 steps: not a whole eval period more
        repro_gpt.run_repro(tmp_path, [0], budgets=[1.02], verbose=False)
    base = with_overrides(RunConfig(), repro_gpt.SCALES["laptop"])
    assert [n for n, _ in repro_gpt.longer_adamw_runs(base, [1.5, 1.51, 1.2], [0])] == [
        "steps-3000_s0",
        "steps-3750_s0",
    ]
    assert not any(tmp_path.iterdir())  # refused before any run starts


def test_steady_scale_trains_adamw_and_adamc_to_a_zero_lr(tmp_path, monkeypatch):
    """--scale steady: seed 002's setting, AdamW against AdamC only, the cosine down to 0."""
    from normctl_lab import repro_gpt
    from normctl_lab.train import lr_multiplier

    tiny = ["task=gpt", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "steps=20", "warmup=2"]
    tiny += ["checkpoint_every=10", "monitor_every=2", "eval_every=10", "device=cpu"]
    monkeypatch.setitem(repro_gpt.SCALES, "steady", [*tiny, "weight_decay=0.5", "min_lr_ratio=0"])
    summary = repro_gpt.run_repro(tmp_path, [0], "steady", verbose=False)
    assert set(summary["methods"]) == {"adamw", "adamc"}
    cfg = RunConfig(**json.loads((tmp_path / "method-adamc_s0" / "config.json").read_text()))
    assert (cfg.weight_decay, cfg.min_lr_ratio) == (0.5, 0.0)
    assert lr_multiplier(cfg)(cfg.steps) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(RunConfig(steps=20, warmup=2))(20) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        RunConfig(min_lr_ratio=1.5)


def test_target_shapes_reach_adamw_ratio_as_named():
    from normctl_lab.methods import target_schedule

    ramp, constant, linear = (target_schedule(shape, 3.0, 1000) for shape in ("ramp", "constant", "linear"))
    assert (ramp(0), ramp(25), ramp(50), ramp(999)) == (1.0, 2.0, 3.0, 3.0)  # 5 % ramp, then held
    assert constant(0) == constant(999) == 3.0
    assert (linear(0), linear(500), linear(1000)) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="target_shape"):
        target_schedule("cosine", 3.0, 1000)


def test_control_gains_puts_layernorm_gains_under_control(tmp_path):
    """With control_gains AdamWN pulls the LayerNorm gains (norm √d at init) to the target too:
    at rate 1 and a constant target their norm ratio is the target after training (left alone,
    Adam moves them by about lr·steps)."""
    from normctl_lab.methods import with_gains_controlled
    from normctl_lab.train import build_task

    from normctl.groups import param_groups

    cfg = with_overrides(RunConfig(), ["n_layer=1", "n_embd=32", "block_size=16"])
    model = build_task(cfg).model
    groups = with_gains_controlled(model, param_groups(model))
    names = {id(p): n for n, p in model.named_parameters()}
    gains = next(g for g in groups if g["name"] == "gains")
    assert gains["control"]
    assert sorted(names[id(p)] for p in gains["params"]) == [
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_2.weight",
        "transformer.ln_f.weight",
    ]
    rest = next(g for g in groups if g["name"] == "no_decay")
    assert not rest["control"] and all(names[id(p)].endswith("bias") for p in rest["params"])

    overrides = ["method=adamwn", "target_ratio=0.5", "target_shape=constant", "rate=1", "steps=5", "monitor_every=1"]
    for control in ("false", "true"):
        run = tmp_path / control
        train(with_overrides(cfg, [*overrides, f"control_gains={control}"]), run, verbose=False)
        ratio = load_run(run).last("group/gains/norm_ratio" if control == "true" else "group/no_decay/norm_ratio")
        if control == "true":
            assert ratio == pytest.approx(0.5, rel=1e-2)  # snapped before each step, then one Adam step
        else:
            assert ratio > 0.5

    # a target of their own: the gains go to it, the matrices to theirs
    run = tmp_path / "own"
    train(with_overrides(cfg, [*overrides, "control_gains=true", "gains_target_ratio=2"]), run, verbose=False)
    assert load_run(run).last("group/gains/norm_ratio") == pytest.approx(2.0, rel=1e-2)
    # the matrices are small here: one Adam step after the snap moves their norm by a few %
    assert load_run(run).last("group/normalized/norm_ratio") == pytest.approx(0.5, rel=0.1)
    assert gains_norm_ratio(run) == pytest.approx(load_run(run).last("group/gains/norm_ratio"), rel=1e-5)


def test_gains_by_decay_leaves_the_voronoi_gains_to_adamws_decay(tmp_path):
    """decay_all decays every tensor; AdamWN controls them all, or with gains_by_decay only the
    matrices, the gains then shrinking by AdamW's decay: at rate 1, target 0.5 and a large λ the
    matrices sit at the target and the gains well below it."""
    base = [
        "task=voronoi",
        "hidden=32",
        "batch_size=64",
        "schedule=constant",
        "method=adamwn",
        "decay_all=true",
        "weight_decay=20",
        "lr=1e-2",
        "target_ratio=0.5",
        "target_shape=constant",
        "rate=1",
        "steps=5",
        "monitor_every=1",
    ]
    ratios = {}
    for gains_by_decay in ("false", "true"):
        run = tmp_path / gains_by_decay
        train(with_overrides(RunConfig(), [*base, f"gains_by_decay={gains_by_decay}"]), run, verbose=False)
        ratios[gains_by_decay] = {g: load_run(run).last(f"group/{g}/norm_ratio") for g in ("decay", "no_decay")}
    assert ratios["false"]["no_decay"] == pytest.approx(0.5, rel=5e-2)  # controlled like the matrices
    assert ratios["true"]["decay"] == pytest.approx(0.5, rel=5e-2)
    assert ratios["true"]["no_decay"] < 0.45  # (1 − γλ)^5 = 0.8^5 ≈ 0.33, plus Adam's steps


def test_voronoi_reproduction_picks_lr_on_validation_and_runs_the_ablations(tmp_path, monkeypatch):
    from normctl_lab import repro_voronoi
    from normctl_lab.sweep import controlled_norm_ratio

    from normctl.report.runs import load_run

    grid = {"decay": ["min"], "method": ["adamwn", "adamwn-global"], "schedule": ["cosine-adamc"], "rms": ["true"]}
    monkeypatch.setitem(repro_voronoi.SCALES, "paper", grid)
    monkeypatch.setitem(repro_voronoi.SCALES, "laptop", {"decay": ["min"], "method": ["adamwn"]})
    summary = repro_voronoi.run_repro(tmp_path, [0], scale="paper", steps=4, verbose=False)
    vals = {
        lr: json.loads((tmp_path / f"lr-{lr}_s0" / "final.json").read_text())["val_acc"]
        for lr in ("2e-3", "3e-3", "5e-3")
    }
    assert summary["chosen_lr"] == max(vals, key=vals.get)
    assert set(summary["variants"]) >= {"decay = min", "method = adamwn", "rms = true"}
    config = json.loads((tmp_path / "decay-min_s0" / "config.json").read_text())
    assert (config["decay"], config["decay_all"], config["lr"]) == ("min", True, float(summary["chosen_lr"]))
    adamwn = json.loads((tmp_path / "method-adamwn_s0" / "config.json").read_text())
    assert (adamwn["target_ratio"], adamwn["scope"]) == (summary["adamwn_target_ratio"], "tensor")
    adamwn_global = json.loads((tmp_path / "method-adamwn-global_s0" / "config.json").read_text())
    assert (adamwn_global["method"], adamwn_global["scope"]) == ("adamwn", "global")
    assert adamwn_global["target_ratio"] == summary["adamwn_target_ratio"]
    adamc = json.loads((tmp_path / "schedule-cosine-adamc_s0" / "config.json").read_text())
    assert (adamc["method"], adamc["schedule"], adamc["target_ratio"]) == ("adamc", "cosine", 1.0)
    assert "schedule = cosine-adamc" in summary["variants"]
    baseline = tmp_path / f"lr-{summary['chosen_lr']}_s0"
    # the study decays every tensor, so AdamWN controls every tensor: its target is the global ratio
    assert controlled_norm_ratio(baseline) == pytest.approx(load_run(baseline).last("global/norm_ratio"), rel=1e-5)
    assert summary["adamwn_target_ratio"] == pytest.approx(controlled_norm_ratio(baseline), abs=1e-4)
    laptop = repro_voronoi.run_repro(tmp_path, [0], steps=4, verbose=False)  # reuses the finished runs
    best = summary["chosen_lr"]
    others = {f"lr {lr}" for lr in ("2e-3", "3e-3", "5e-3") if lr != best}
    assert set(laptop["variants"]) == {f"baseline (lr {best})", "decay = min", "method = adamwn", *others}
    with pytest.raises(ValueError, match="scale must be one of"):
        repro_voronoi.run_repro(tmp_path, [0], scale="huge", verbose=False)


def test_voronoi_laptop_scale_is_part_of_the_paper_grid():
    # a laptop run's directories are the paper grid's: --scale paper resumes from them
    from normctl_lab.repro_voronoi import ABLATIONS, SCALES

    assert SCALES["paper"] is ABLATIONS
    assert list(ABLATIONS)[: len(SCALES["laptop"])] == list(SCALES["laptop"])
    for key, values in SCALES["laptop"].items():
        assert set(values) <= set(ABLATIONS[key])
        assert ABLATIONS[key][: len(values)] == values  # and the paper grid trains them first


@pytest.mark.parametrize(
    "corpus,start,size", [("kjv", "In the beginning God created", 4_137_914), ("brown", "The Fulton County", 5_967_797)]
)
def test_embedded_corpora_are_whole_and_train(tmp_path, corpus, start, size):
    from normctl_lab.data import load_text

    text = load_text(corpus)
    assert text.startswith(start) and len(text) == size
    assert "/nn" not in text and "Ge1:1" not in text  # tags and verse references stripped
    cfg = with_overrides(RunConfig(), [f"corpus={corpus}", "steps=3", "n_layer=1", "n_embd=32", "block_size=16"])
    assert train(cfg, tmp_path / corpus, verbose=False)["val_loss"] < 6.0  # below ln(256) ≈ 5.55 + slack


def test_target_ratio_auto_measures_the_target_in_the_run(tmp_path):
    from normctl_lab import checkpoint

    assert with_overrides(RunConfig(), ["target_ratio=auto"]).auto_target == "equilibrium"
    assert with_overrides(RunConfig(), ["target_ratio=auto:inflection"]).auto_target == "inflection"
    with pytest.raises(ValueError, match="auto_target must be one of"):
        with_overrides(RunConfig(), ["target_ratio=auto:guess"])
    cfg = with_overrides(
        RunConfig(),
        ["steps=6", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "method=adamwn", "target_ratio=auto"]
        + ["auto_steps=3", "auto_decay=0.2"],
    )
    assert cfg.auto == normctl.AutoTarget(
        rule="equilibrium", weight_decay=0.2, steps=3, interval=100, without_length="asymptotic"
    )
    train(cfg, tmp_path, verbose=False)
    state = checkpoint.load(tmp_path / "checkpoint.pt")["optimizer"]["state"]
    taus = [float(s["auto_target"]) for s in state.values() if "auto_target" in s]
    assert taus and all(t > 0 for t in taus)


def test_gpt_init_torch_keeps_pytorchs_default_initialisation():
    from normctl_lab.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_embd=64, init="torch"))
    assert 0.9 < model.transformer.wpe.weight.std().item() < 1.1  # N(0, 1) embeddings
    assert 0.9 < model.lm_head.weight.std().item() < 1.1  # the tied token embedding too
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() > 0  # Linear's own uniform bias
    gpt2 = GPT(GPTConfig(n_layer=1, n_embd=64))
    assert gpt2.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_paired_differences_and_their_t_interval():
    from normctl_lab.paired import paired_difference

    result = paired_difference({0: 1.0, 1: 2.0, 2: 4.0, 5: 9.0}, {0: 0.5, 1: 1.0, 2: 2.5})
    assert result["seeds"] == [0, 1, 2] and result["differences"] == [0.5, 1.0, 1.5]
    half = 4.303 * 0.5 / 3**0.5  # t(0.975, 2) · std / √n
    assert result["mean"] == 1.0 and result["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    assert paired_difference({3: 1.0}, {3: 0.25})["ci95"] is None
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_a_diverged_runs_nan_shows_in_the_statistics_instead_of_stopping_them():
    """statistics.stdev stops with an exception on NaN; a tune's summary, hours in, did too."""
    import math

    from normctl_lab.paired import mean_std, paired_difference
    from normctl_lab.tune import _close_calls

    stats = mean_std([1.2, math.nan, 1.3])
    assert math.isnan(stats["mean"]) and math.isnan(stats["std"]) and stats["n"] == 3
    result = paired_difference({0: 1.0, 1: math.nan}, {0: 0.5, 1: 0.5})
    assert math.isnan(result["mean"]) and all(math.isnan(x) for x in result["ci95"])
    assert _close_calls({"a": {0: 1.0, 1: math.nan}, "b": {0: 1.0, 1: 1.1}}) == set()
    assert mean_std([2.0])["std"] == 0.0


def test_auto_target_comparison_runs_end_to_end(tmp_path):
    from normctl_lab import repro_auto

    tiny = ["task=gpt", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "steps=8", "checkpoint_every=4"]
    tiny += ["monitor_every=2", "eval_every=4", "auto_steps=2", "auto_interval=2"]
    pytest.importorskip("pytorch_cpr")
    summary = repro_auto.run_repro(
        tmp_path, [0, 1], inits=("torch",), peer_methods=("adamcpr",), workers=1, base_overrides=tiny, verbose=False
    )
    rows = summary["inits"]["torch"]["methods"]
    ours = {"method=adamw", "method=adamwn", "auto_target=equilibrium", "auto_target=inflection"}
    ours |= {
        "auto_run_length=true",
        "auto_alignment=true",
        "auto_shared_ratio=true",
    }  # told the length (+ a, + 1 ratio)
    assert set(rows) == ours | {"method=adamcpr"}
    assert all("package" not in rows[label] for label in ours)
    from importlib import metadata

    installed = f"pytorch-cpr {metadata.version('pytorch-cpr')}"
    assert rows["method=adamcpr"]["package"] == installed  # the peer's version, from its runs
    auto = rows["auto_target=equilibrium"]
    assert auto["minus_adamw"]["seeds"] == [0, 1] and len(auto["minus_adamwn"]["differences"]) == 2
    by_seed = auto["val_loss_by_seed"]
    adamw = rows["method=adamw"]["val_loss_by_seed"]
    assert auto["minus_adamw"]["differences"] == [by_seed[s] - adamw[s] for s in (0, 1)]
    length = json.loads((tmp_path / "torch" / "auto_run_length-true_s0" / "config.json").read_text())
    assert (length["auto_target"], length["auto_run_length"]) == ("equilibrium", True)  # told the run's length
    aligned = json.loads((tmp_path / "torch" / "auto_alignment-true_s0" / "config.json").read_text())
    assert [aligned[k] for k in ("auto_target", "auto_run_length", "auto_alignment")] == ["equilibrium", True, True]
    shared = json.loads((tmp_path / "torch" / "auto_shared_ratio-true_s0" / "config.json").read_text())
    assert [shared[k] for k in ("auto_run_length", "auto_alignment", "auto_shared_ratio")] == [True, True, True]
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "torch" / "report.html").is_file()
    with pytest.raises(ValueError, match="inits must be some of"):
        repro_auto.run_repro(tmp_path, [0], inits=("xavier",))


@pytest.mark.parametrize("method", ["adamcpr", "hyperball"])
def test_peer_methods_train_through_the_harness(tmp_path, method):
    from normctl_lab.peers import PEERS

    pytest.importorskip({"adamcpr": "pytorch_cpr", "hyperball": "heavyball"}[method])
    cfg = with_overrides(
        RunConfig(),
        ["steps=12", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "monitor_every=4"]
        + [f"method={method}", "cpr_kappa_init=warm_start", "cpr_kappa_param=4"],
    )
    final = train(cfg, tmp_path, verbose=False)
    assert final["status"] == "finished" and final["val_loss"] > 0
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert PEERS[method] in environment["peers"]  # the package and its version, with the run
    from normctl_lab.sweep import CONTROLLED_GROUPS, _joint_norm_ratio, _tensor_names, controlled_norm_ratio

    last = load_run(tmp_path).records[-1]
    by_tensor = _joint_norm_ratio(last, [f"tensor/{n}" for n in _tensor_names(tmp_path, CONTROLLED_GROUPS)])
    assert controlled_norm_ratio(tmp_path) == pytest.approx(by_tensor, rel=1e-12)
    if method == "hyperball":
        assert by_tensor == pytest.approx(1.0, rel=1e-4)
    if method == "hyperball":  # every matrix held on the sphere of its initial norm
        matrices = [k for k in last if k.endswith("/norm_ratio") and k.startswith("tensor/") and "weight" in k]
        matrices = [k for k in matrices if "ln" not in k]
        assert matrices and all(last[k] == pytest.approx(1.0, rel=1e-4) for k in matrices)


def test_auto_target_summaries_accumulate_per_initialisation(tmp_path):
    from normctl_lab import repro_auto

    tiny = ["task=gpt", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "steps=4", "checkpoint_every=4"]
    tiny += ["monitor_every=2", "eval_every=4", "auto_steps=2", "auto_interval=2"]
    run = dict(peer_methods=(), workers=1, base_overrides=tiny, verbose=False)
    repro_auto.run_repro(tmp_path, [0], inits=("torch",), **run)
    summary = repro_auto.run_repro(tmp_path, [0], inits=("gpt2",), **run)
    assert list(summary["inits"]) == ["gpt2", "torch"]  # the earlier one kept, in a fixed order
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with pytest.raises(ValueError, match="summarises seeds"):
        repro_auto.run_repro(tmp_path, [0, 1], inits=("gpt2",), **run)


def test_the_tail_rise_is_stored_with_the_run_at_full_resolution(tmp_path):
    from normctl.monitor import tail_rise

    cfg = with_overrides(RunConfig(), ["steps=40", "n_layer=1", "n_embd=32", "block_size=16", "batch_size=4"])
    cfg = with_overrides(cfg, ["monitor_every=2", "method=adamc"])
    final = train(cfg, tmp_path, verbose=False)
    records = load_run(tmp_path).records
    assert set(final["tail_rise"]) >= {"global/grad_norm", "group/normalized/grad_norm"}
    for key, value in final["tail_rise"].items():
        assert value == pytest.approx(tail_rise([r.get(key) for r in records]), rel=1e-12)
    last = records[-1]  # the norm ratios at the end, kept where thinning may drop the last record
    assert final["norm_ratio"]["global/norm_ratio"] == last["global/norm_ratio"]
    assert final["norm_ratio"]["group/normalized/norm_ratio"] == last["group/normalized/norm_ratio"]


def test_a_sweep_as_cluster_jobs_trains_each_run_and_resumes(tmp_path, capsys):
    """submitit's local cluster: one process per job, as Slurm would run them."""
    pytest.importorskip("submitit")
    from normctl_lab import cluster, sweep

    base = with_overrides(RunConfig(), ["task=voronoi", "steps=3", "hidden=16", "batch_size=32", "schedule=constant"])
    grid = {"method": ["adamw", "adamwn"]}
    options = cluster.parse_options(["cluster=local", "timeout_min=10"])
    assert options == {"cluster": "local", "timeout_min": 10}
    results = sweep.run_sweep(base, grid, [0], tmp_path, executor="submitit", executor_options=options)
    assert sorted(r["label"] for r in results) == ["method=adamw", "method=adamwn"]
    assert all(r["status"] == "finished" for r in results) and (tmp_path / "submitit").is_dir()
    assert "submitted 2 jobs" in capsys.readouterr().out
    again = sweep.run_sweep(base, grid, [0], tmp_path, executor="submitit", executor_options=options)
    assert again == results and "submitted" not in capsys.readouterr().out  # nothing left to train

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # fails inside the job
    with pytest.raises(RuntimeError, match=r"runs failed:\n  bad \(job"):
        sweep.train_runs([("bad", base)], tmp_path, executor="submitit", executor_options=options, verbose=False)
    with pytest.raises(ValueError, match="executor must be one of"):
        sweep.train_runs([], tmp_path, executor="slurm")
    with pytest.raises(ValueError, match="--executor-option expects key=value"):
        cluster.parse_options(["partition"])


def test_the_tensors_of_a_runs_groups_follow_the_grouping_it_trained_with(tmp_path):
    from normctl_lab.sweep import _tensor_names

    cfg = with_overrides(RunConfig(), ["task=torchlm", "n_layer=1", "n_embd=32", "block_size=16", "steps=2"])
    (tmp_path / "config.json").write_text(cfg.to_json())  # the lab's default: the untied head held
    assert "head.weight" in _tensor_names(tmp_path, ["normalized", "decay"])
    (tmp_path / "config.json").write_text(with_overrides(cfg, ["control_output=false"]).to_json())
    assert "head.weight" not in _tensor_names(tmp_path, ["normalized", "decay"])
