"""The tuning protocol: the same budget per method, selection on validation, report on test."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

pytest.importorskip("normctl_lab")

from normctl_lab import search_spaces, tune, tune_report  # noqa: E402
from normctl_lab.config import RunConfig, with_overrides  # noqa: E402
from normctl_lab.train import build_task  # noqa: E402

TINY_VORONOI = ["task=voronoi", "steps=3", "hidden=16", "batch_size=32", "schedule=constant", "monitor_every=1"]


def test_every_method_gets_the_same_number_of_points_inside_its_own_ranges():
    base = RunConfig(lr=2e-3, steps=1000)
    for name, space in search_spaces.SEARCH_SPACES.items():
        points = search_spaces.candidates(space, base, 16)
        assert len(points) == 16 and points == search_spaces.candidates(space, base, 16)  # the same draws every call
        for point in points:
            assert point.items() >= space.fixed.items()
            for knob in space.knobs:
                value = point[knob.field]
                if isinstance(knob, search_spaces.Choice):
                    assert value in knob.options
                    continue
                scale = getattr(base, knob.relative_to) if knob.relative_to else 1.0
                assert knob.low * scale * 0.999 <= value <= knob.high * scale * 1.001, (name, knob.field, value)
            with_overrides(base, search_spaces.as_overrides(point))  # every point is a valid config
    lrs = sorted(p["lr"] for p in search_spaces.candidates(search_spaces.SEARCH_SPACES["hyperball"], base, 8))
    # log-uniform and evenly spread: one point in each eighth of the log range
    positions = [math.log(lr / 5e-4) / math.log(16) for lr in lrs]
    assert [int(8 * x) for x in positions] == list(range(8))
    cpr = search_spaces.candidates(search_spaces.SEARCH_SPACES["adamcpr"], base, 16)
    assert {p["cpr_kappa_init"] for p in cpr} == {"inflection_point", "warm_start"}
    assert all(isinstance(p["cpr_kappa_param"], int) and 20 <= p["cpr_kappa_param"] <= 300 for p in cpr)
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        search_spaces.candidates(search_spaces.SEARCH_SPACES["adamw"], base, 0)


def test_methods_sharing_a_knob_try_the_same_values_of_it_whatever_their_other_knobs():
    base = RunConfig(lr=2e-3, steps=1000)
    spaces = search_spaces.SEARCH_SPACES
    lrs = {name: [p["lr"] for p in search_spaces.candidates(spaces[name], base, 8)] for name in spaces}
    assert len({tuple(v) for v in lrs.values()}) == 1, lrs  # 1, 2 and 3 knobs: the same learning rates
    adamw, adamc = (search_spaces.candidates(spaces[m], base, 8) for m in ("adamw", "adamc"))
    assert [p["weight_decay"] for p in adamw] == [p["weight_decay"] for p in adamc]
    # the directories searched before keep their own points
    old = search_spaces.candidates(spaces["adamw"], base, 8, points="per_method")
    assert [p["lr"] for p in old] != lrs["adamw"]
    with pytest.raises(ValueError, match="points must be"):
        search_spaces.candidates(spaces["adamw"], base, 8, points="other")


def test_a_knob_at_the_edge_of_its_range_is_flagged():
    knob, base = search_spaces.Knob("lr", 0.25, 4.0, relative_to="lr"), RunConfig(lr=1e-3)
    assert knob.at_edge(2.5e-4, base) and knob.at_edge(3.9e-3, base)
    assert not knob.at_edge(1e-3, base)
    linear = search_spaces.Knob("warmup", 0, 100, log=False)
    assert linear.at_edge(95, base) and not linear.at_edge(50, base)


def test_the_selection_split_is_held_out_of_training_and_apart_from_the_test_split():
    gpt = with_overrides(RunConfig(), ["n_layer=1", "n_embd=32", "block_size=16", "batch_size=4"])
    plain, split = build_task(gpt), build_task(with_overrides(gpt, ["selection_split=0.05"]))
    assert set(plain.evaluate(plain.model)) == {"val_loss", "test_loss"}
    both = split.evaluate(split.model)
    assert set(both) == {"val_loss", "test_loss", "selection_loss"}
    assert both["val_loss"] == plain.evaluate(plain.model)["val_loss"]  # the same model (seed) and test windows
    fmnist = with_overrides(RunConfig(), ["task=fmnist", "width=4", "batch_size=4", "selection_split=0.1"])
    task = build_task(fmnist)
    # the held-out loss beside the accuracy on every split: a held head shows in the loss alone
    assert set(task.evaluate(task.model)) == {"test_acc", "test_loss", "selection_acc", "selection_loss"}
    # training batches never draw the last 10 % of the training images
    images = torch.cat([task.batch(torch.Generator().manual_seed(i))[0] for i in range(300)])
    from normctl_lab.data.fashion_mnist import load_fashion_mnist

    held = load_fashion_mnist("train")[0][1800:]
    assert not any(bool((image == held).flatten(1).all(1).any()) for image in images[:200])
    with pytest.raises(ValueError, match="selection_split must be in"):
        with_overrides(RunConfig(), ["selection_split=0.5"])
    with pytest.raises(ValueError, match="Voronoi task selects on its own"):
        with_overrides(RunConfig(), ["task=voronoi", "selection_split=0.1"])


def test_tune_selects_on_validation_reports_on_test_and_resumes(tmp_path, monkeypatch):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    summary = tune.run_tune(base, ["adamw", "adamwn"], tmp_path, budget=3, verbose=False)
    assert summary["protocol"]["selected_on"] == "val_acc" and summary["protocol"]["reported_on"] == "test_acc"
    for method, row in summary["methods"].items():
        search = row["search"]
        assert len(search) == 3
        best = max(search, key=lambda r: r["val_acc"])
        assert row["selected"] == best["run"]
        config = json.loads((tmp_path / "search" / best["run"] / "config.json").read_text())
        for seed, score in row["test_acc_by_seed"].items():
            final = json.loads((tmp_path / "final" / f"{method}_s{seed}" / "final.json").read_text())
            assert final["test_acc"] == score
            trained = json.loads((tmp_path / "final" / f"{method}_s{seed}" / "config.json").read_text())
            assert trained == config | {"seed": seed, "label": method}  # the selected config, seed by seed
        assert len(row["test_acc_by_seed"]) in (3, 5)
        assert 0 not in row["test_acc_by_seed"]  # the finals never reuse the search seed
    adamwn = summary["methods"]["adamwn"]
    adamw_scores = summary["methods"]["adamw"]["test_acc_by_seed"]
    diff = adamwn["minus_adamw"]
    assert diff["differences"] == [adamwn["test_acc_by_seed"][s] - adamw_scores[s] for s in diff["seeds"]]
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert "| adamwn |" in tune_report.summary_table(summary)
    # the held-out loss beside the accuracy: per seed from the same finals, paired, tabled, worded
    assert summary["protocol"]["reported_beside"] == "test_loss"
    for method, row in summary["methods"].items():
        for seed, loss in row["test_loss_by_seed"].items():
            assert (
                loss == json.loads((tmp_path / "final" / f"{method}_s{seed}" / "final.json").read_text())["test_loss"]
            )
    adamw_losses = summary["methods"]["adamw"]["test_loss_by_seed"]
    loss_diff = adamwn["minus_adamw_test_loss"]
    assert loss_diff["differences"] == [adamwn["test_loss_by_seed"][s] - adamw_losses[s] for s in loss_diff["seeds"]]
    assert "| test_loss | test_loss − adamw [95 % CI] |" in tune_report.summary_table(summary)
    assert any(line.startswith("adamwn (test_loss)") for line in tune_report.verdicts(summary))
    # what it cost: every run's training seconds, summed per stage
    seconds = {
        stage: sum(json.loads(f.read_text())["train_seconds"] for f in (tmp_path / stage).glob("*/final.json"))
        for stage in ("search", "final")
    }
    assert summary["train_hours"] == {stage: round(s / 3600, 2) for stage, s in seconds.items()}
    assert tune_report.cost_line(summary).startswith("training time, summed over runs: search ")
    assert "final not recorded" in tune_report.cost_line({"train_hours": {"search": 1.5, "final": None}})

    from normctl_lab import sweep

    calls = []
    monkeypatch.setattr(sweep, "train", lambda *a, **k: calls.append(a))
    again = tune.run_tune(base, ["adamw", "adamwn"], tmp_path, budget=3, verbose=False)
    assert calls == [] and again == summary
    untimed = tmp_path / "search" / "adamw_c0" / "final.json"  # as a run trained before times were kept
    untimed.write_text(json.dumps({k: v for k, v in json.loads(untimed.read_text()).items() if k != "train_seconds"}))
    hours = tune.run_tune(base, ["adamw", "adamwn"], tmp_path, budget=3, verbose=False)["train_hours"]
    assert hours == {"search": None, "final": summary["train_hours"]["final"]}  # unknown, not undercounted
    with pytest.raises(ValueError, match="another budget"):
        tune.run_tune(base, ["adamw"], tmp_path, budget=4, verbose=False)


def test_a_peers_row_names_its_package_and_version(tmp_path):
    from importlib import metadata

    from normctl_lab.peers import peer_package

    pytest.importorskip("pytorch_cpr")
    base = with_overrides(RunConfig(), TINY_VORONOI)
    summary = tune.run_tune(base, ["adamw", "adamcpr"], tmp_path, budget=1, verbose=False)
    installed = f"pytorch-cpr {metadata.version('pytorch-cpr')}"
    assert summary["methods"]["adamcpr"]["package"] == installed and "package" not in summary["methods"]["adamw"]
    assert f"| adamcpr ({installed}) |" in tune_report.summary_table(summary)

    # from the runs' environment.json: a resume on another version names both; a run without one says so
    started, resumed, bare = (tmp_path / name for name in ("started", "resumed", "bare"))
    for run in (started, resumed, bare):
        run.mkdir()
    (started / "environment.json").write_text(json.dumps({"peers": {"pytorch-cpr": "0.3.1"}}))
    moved_on = {"peers": {"pytorch-cpr": "0.3.1"}, "resumed": [{"step": 8, "peers": {"pytorch-cpr": "0.4.0"}}]}
    (resumed / "environment.json").write_text(json.dumps(moved_on))
    assert peer_package("adamcpr", [started]) == "pytorch-cpr 0.3.1"
    assert peer_package("adamcpr", [started, resumed]) == "pytorch-cpr 0.3.1 / 0.4.0"
    assert peer_package("hyperball", [bare]) == "heavyball version not recorded"
    assert peer_package("adamw", [started]) is None  # normctl's own methods name no package


def test_knobs_restrict_the_search_and_are_part_of_the_protocol(tmp_path):
    """An ablation fixed in the base config (here λ = 1) with only its lr tuned."""
    base = with_overrides(RunConfig(), TINY_VORONOI + ["weight_decay=1.0"])
    summary = tune.run_tune(base, ["adamw"], tmp_path, budget=3, knobs=["lr"], verbose=False)
    search = summary["methods"]["adamw"]["search"]
    assert len({row["lr"] for row in search}) == 3 and all(set(row) >= {"lr"} for row in search)
    assert "weight_decay" not in summary["methods"]["adamw"]["knobs"] and summary["protocol"]["knobs"] == ["lr"]
    for row in search:
        assert json.loads((tmp_path / "search" / row["run"] / "config.json").read_text())["weight_decay"] == 1.0
    with pytest.raises(ValueError, match="another knobs"):  # the full space would be another search
        tune.run_tune(base, ["adamw"], tmp_path, budget=3, verbose=False)
    with pytest.raises(ValueError, match="leave nothing to search"):
        tune.run_tune(base, ["adamw"], tmp_path / "other", budget=3, knobs=["rate"], verbose=False)


def test_ranges_replace_a_knobs_bounds_and_are_part_of_the_protocol(tmp_path, monkeypatch):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    space = search_spaces.restricted(search_spaces.SEARCH_SPACES["adamw"], ["lr"], {"lr": (1e-2, 4e-2)})
    lrs = [p["lr"] for p in search_spaces.candidates(space, base, 8)]
    assert all(1e-2 <= lr <= 4e-2 for lr in lrs)  # absolute: base.lr (3e-3) no longer scales it
    assert space.knobs[0].bounds(with_overrides(base, ["lr=1"])) == (1e-2, 4e-2)

    from normctl_lab import sweep

    monkeypatch.setattr(sweep, "train", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(base, ["adamw"], tmp_path, budget=3, knobs=["lr"], ranges={"lr": (1e-2, 4e-2)}, verbose=False)
    assert json.loads((tmp_path / "protocol.json").read_text())["ranges"] == {"lr": [1e-2, 4e-2]}
    with pytest.raises(ValueError, match="another ranges"):  # the first range's search is another search
        tune.run_tune(base, ["adamw"], tmp_path, budget=3, knobs=["lr"], verbose=False)
    with pytest.raises(ValueError, match="another ranges"):
        tune.run_tune(base, ["adamw"], tmp_path, budget=3, knobs=["lr"], ranges={"lr": (1e-2, 5e-2)}, verbose=False)
    for bad, message in [
        ({"rate": (1e-3, 1e-1)}, "no numeric knob of"),  # not adamw's
        ({"cpr_kappa_init": (1, 2)}, "no numeric knob of"),
        ({"lr": (4e-2, 1e-2)}, "0 < low < high"),
        ({"lr": (0, 1e-2)}, "0 < low < high"),
    ]:
        with pytest.raises(ValueError, match=message):
            tune.run_tune(base, ["adamw", "adamcpr"], tmp_path / "bad", ranges=bad, verbose=False)
    with pytest.raises(ValueError, match="no numeric knob of"):  # λ is not searched under knobs=lr
        tune.run_tune(base, ["adamw"], tmp_path / "bad", knobs=["lr"], ranges={"weight_decay": (1e-3, 1e-2)})
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_a_selection_at_an_edge_or_among_diverged_runs_says_so():
    base = with_overrides(RunConfig(), TINY_VORONOI)  # lr 3e-3: adamw's lr range is [7.5e-4, 1.2e-2]
    search = [{"run": "adamw_c0", "status": "finished"}, {"run": "adamw_c1", "status": "diverged"}]
    row = {"knobs": {"lr": 0.0116, "weight_decay": 0.01}, "at_edge": ["lr"], "search": search}
    summary = {
        "protocol": {"base": dataclasses.asdict(base)},
        "methods": {"adamw": row, "adamc": row | {"at_edge": []}},
    }
    (note,) = tune_report.selection_notes(summary)
    assert note.startswith("adamw: lr=0.0116 is at an edge of its range [0.00075, 0.012]")
    low, high = (float(x) for x in note.split("--range lr=")[1].split()[0].split(":"))
    assert low * high == pytest.approx(0.0116**2, rel=1e-2) and high / low == pytest.approx(16, rel=1e-2)
    summary["protocol"]["ranges"] = {"lr": [1e-2, 4e-2]}  # a second tuning: the note speaks of its range
    assert "[0.01, 0.04]" in tune_report.selection_notes(summary)[0]
    summary["methods"]["adamc"]["search"] = [search[1]]  # nothing it tried trained to the end
    diverged = "adamc: every searched configuration diverged; its selection is arbitrary"
    assert tune_report.selection_notes(summary)[1] == diverged


def test_the_tune_command_parses_ranges(tmp_path, monkeypatch):
    from normctl_lab import cli

    seen = {}
    monkeypatch.setattr(tune, "run_tune", lambda *a, **k: seen.update(k))
    cli.main(
        [
            "tune",
            "--methods",
            "adamw",
            "--out",
            str(tmp_path),
            "--range",
            "lr=1e-3:3e-2",
            "--range",
            "weight_decay=0.1:1",
        ]
    )
    assert seen["ranges"] == {"lr": (1e-3, 3e-2), "weight_decay": (0.1, 1.0)}
    with pytest.raises(SystemExit):
        cli.main(["tune", "--methods", "adamw", "--out", str(tmp_path), "--range", "lr=1e-3"])


def test_a_method_with_fields_fixed_is_tuned_beside_its_baseline(tmp_path):
    """Yu's (2022) ablations with their own lr: AdamW, AdamW with the min decay and AdamW at λ = 1,
    each searching its lr with the same budget, paired against the first."""
    space = search_spaces.search_space("adamw+decay=min")
    assert space.fixed == {"method": "adamw", "decay": "min"}
    assert [k.field for k in space.knobs] == ["lr", "weight_decay"]
    fixed_decay = search_spaces.search_space("adamw+weight_decay=1+decay=l1")
    assert [k.field for k in fixed_decay.knobs] == ["lr"]  # a fixed knob leaves the search
    for bad, message in [
        ("adamq+decay=min", "methods must be some of"),
        ("adamw+decay", "one distinct KEY=VALUE"),
        ("adamw+decay=min+decay=l1", "one distinct KEY=VALUE"),
        ("adamw+=1", "one distinct KEY=VALUE"),
        ("adamw+decy=min", "unknown config field 'decy'"),
        ("adamw+decay=l3", "decay must be one of"),
        ("adamw+seed=4", "the protocol's to set"),
        ("hyperball+lr=1e-3", "nothing is left to search"),
    ]:
        with pytest.raises(ValueError, match=message):
            tune.run_tune(RunConfig(), ["adamw", bad], tmp_path / "bad", verbose=False)
    assert not (tmp_path / "bad").exists()

    base = with_overrides(RunConfig(), TINY_VORONOI)
    methods = ["adamw", "adamw+decay=min", "adamw+weight_decay=1"]
    summary = tune.run_tune(base, methods, tmp_path, budget=2, knobs=["lr"], verbose=False)
    assert list(summary["methods"]) == methods
    for method, decay, weight_decay in [
        ("adamw+decay=min", "min", base.weight_decay),
        ("adamw+weight_decay=1", "l2", 1.0),
    ]:
        row = summary["methods"][method]
        assert row["search"][0]["lr"] == summary["methods"]["adamw"]["search"][0]["lr"]  # the same points
        for seed in row["test_acc_by_seed"]:
            config = json.loads((tmp_path / "final" / f"{method}_s{seed}" / "config.json").read_text())
            assert (config["decay"], config["weight_decay"], config["label"]) == (decay, weight_decay, method)
        assert row["minus_adamw"]["seeds"] == sorted(row["test_acc_by_seed"])


def test_the_gpu_scale_sizes_each_task_for_a_gpu_and_set_still_wins(tmp_path, monkeypatch):
    from normctl_lab import cli

    seen = []
    monkeypatch.setattr(tune, "run_tune", lambda base, *a, **k: seen.append(base))
    config = tmp_path / "voronoi.json"
    config.write_text(json.dumps({"task": "voronoi", "steps": 10000, "hidden": 512}))
    for args in (
        ["--set", "task=gpt", "--set", "steps=300"],
        ["--set", "task=fmnist"],
        [str(config)],
        [str(config), "--set", "device=cpu"],
    ):
        cli.main(["tune", *args, "--scale", "gpu", "--methods", "adamw", "--out", str(tmp_path / "t")])
    gpt, resnet, voronoi, voronoi_cpu = seen
    assert (gpt.n_layer, gpt.n_embd, gpt.block_size, gpt.device, gpt.steps) == (12, 768, 1024, "cuda", 300)
    assert (resnet.width, resnet.blocks_per_stage, resnet.full_data, resnet.device) == (16, 3, True, "cuda")
    assert (voronoi.hidden, voronoi.steps, voronoi.device) == (512, 10000, "cuda")  # the config's sizes kept
    assert voronoi_cpu.device == "cpu"
    assert set(tune.GPU_SCALE) == set(tune.TASK_METRICS)  # every task the protocol tunes has a GPU size


def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from normctl_lab import sweep

    monkeypatch.setattr(sweep, "train", lambda *a, **k: pytest.fail("a dry run trained"))
    base = with_overrides(RunConfig(), TINY_VORONOI)
    out = tmp_path / "tune"
    plan = tune.run_tune(base, ["adamw", "adamw+decay=min"], out, budget=3, knobs=["lr"], dry_run=True)
    assert not out.exists()
    points = search_spaces.candidates(search_spaces.restricted(search_spaces.SEARCH_SPACES["adamw"], ["lr"]), base, 3)
    assert [row["lr"] for row in plan["search"]["adamw+decay=min"]] == [p["lr"] for p in points]
    assert plan["runs"] == {"search": 6, "search_finished": 0, "final": [6, 10]}  # two methods, seeds 3 or 5
    printed = capsys.readouterr().out
    assert "adamw+decay=min_c2: lr=" in printed and "16 in all" in printed
    (out / "search" / "adamw_c1").mkdir(parents=True)
    (out / "search" / "adamw_c1" / "final.json").write_text("{}")
    again = tune.run_tune(base, ["adamw"], out, budget=3, knobs=["lr"], dry_run=True, verbose=False)
    assert again["runs"] == {"search": 3, "search_finished": 1, "final": [3, 3]}  # one method: no close calls
    # a finished run trained with another configuration: the real run refuses it, so the plan does
    # (it had counted it as finished, and the tuning then stopped at once)
    stale = dict(dataclasses.asdict(base), method="adamw", label="adamw_c1", lr=0.123456)
    (out / "search" / "adamw_c1" / "config.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match=r"(?s)adamw_c1: lr 0.123456 → 0.004368\n.*another --out"):
        tune.run_tune(base, ["adamw"], out, budget=3, knobs=["lr"], dry_run=True, verbose=False)
    (out / "search" / "adamw_c1" / "config.json").unlink()
    (out / "protocol.json").write_text(json.dumps(tune._protocol_key(base, ["adamw"], 4, [0])))
    with pytest.raises(ValueError, match="another budget"):  # the dry run says what the real one would
        tune.run_tune(base, ["adamw"], out, budget=3, dry_run=True)


def test_a_tuning_cut_short_keeps_its_protocol(tmp_path, monkeypatch):
    from normctl_lab import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "train", interrupted)
    base = with_overrides(RunConfig(), TINY_VORONOI)
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(base, ["adamw"], tmp_path, budget=3, verbose=False)
    with pytest.raises(ValueError, match="another budget"):  # not a second search mixed into the first
        tune.run_tune(base, ["adamw"], tmp_path, budget=4, verbose=False)


def test_tune_refuses_what_the_protocol_cannot_report(tmp_path):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    with pytest.raises(ValueError, match="methods must be some of"):
        tune.run_tune(base, ["adamq"], tmp_path)
    with pytest.raises(ValueError, match="seeds must be at least 3"):
        tune.run_tune(base, ["adamw"], tmp_path, seeds=[1, 2])
    with pytest.raises(ValueError, match=r"seeds \[0, 1, 2\] must be disjoint from search_seeds \[0\]"):
        tune.run_tune(base, ["adamw"], tmp_path, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="reference must be one of"):
        tune.run_tune(base, ["adamw"], tmp_path, reference="sgd")
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_close_calls_and_diverged_runs(tmp_path):
    scores = {"a": {0: 1.0, 1: 1.2, 2: 1.4}, "b": {0: 1.3, 1: 1.5, 2: 1.7}, "c": {0: 9.0, 1: 9.1, 2: 9.2}}
    assert tune._close_calls(scores) == {"a", "b"}  # |1.2 − 1.5| < 2 × 0.2; c is far from both

    base = with_overrides(RunConfig(), TINY_VORONOI)
    configs = tune._search_runs(base, "adamw", search_spaces.SEARCH_SPACES["adamw"], 2, [0])
    for [(name, _)], (status, acc) in zip(configs, [("diverged", None), ("finished", 0.4)]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.json").write_text(json.dumps({"status": status, "val_acc": acc}))
    selected = tune._select(tmp_path, search_spaces.SEARCH_SPACES["adamw"], configs, tune.TASK_METRICS["voronoi"], base)
    assert selected["selected"] == "adamw_c1" and selected["search"][0]["val_acc"] == -math.inf


def test_close_calls_are_decided_on_the_selection_split_not_the_test_split(tmp_path):
    # far apart on the selection split (val_acc), level on the test split: no seeds are added —
    # deciding on the test split would be optional stopping
    base = with_overrides(RunConfig(), TINY_VORONOI)
    configs = {m: dataclasses.asdict(with_overrides(base, [f"method={m}"])) for m in ("adamw", "adamc")}
    for m, val in (("adamw", 0.2), ("adamc", 0.9)):
        for seed, test in zip((1, 2, 3), (0.50, 0.52, 0.54)):
            run = tmp_path / f"{m}_s{seed}"
            run.mkdir()
            run.joinpath("final.json").write_text(
                json.dumps({"status": "finished", "val_acc": val + seed / 100, "test_acc": test})
            )
    launch = dict(workers=1, executor="local", executor_options=None, verbose=False)
    final = tune._train_finals(configs, [1, 2, 3], tmp_path, tune.TASK_METRICS["voronoi"], launch)
    assert {m: sorted(scores) for m, (scores, _) in final.items()} == {"adamw": [1, 2, 3], "adamc": [1, 2, 3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{m}_s{s}" for m in configs for s in (1, 2, 3))


def test_several_search_seeds_select_on_the_mean_score(tmp_path):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    configs = tune._search_runs(base, "adamw", search_spaces.SEARCH_SPACES["adamw"], 2, [0, 5])
    assert [[name for name, _ in runs] for runs in configs] == [
        ["adamw_c0_s0", "adamw_c0_s5"],
        ["adamw_c1_s0", "adamw_c1_s5"],
    ]
    assert [cfg.seed for _, cfg in configs[0]] == [0, 5] and configs[0][0][1].lr == configs[0][1][1].lr
    # c0 wins on seed 0 by luck, c1 on average
    for name, acc in [("adamw_c0_s0", 0.9), ("adamw_c0_s5", 0.5), ("adamw_c1_s0", 0.8), ("adamw_c1_s5", 0.8)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.json").write_text(json.dumps({"status": "finished", "val_acc": acc}))
    selected = tune._select(tmp_path, search_spaces.SEARCH_SPACES["adamw"], configs, tune.TASK_METRICS["voronoi"], base)
    assert selected["selected"] == "adamw_c1" and selected["search"][1]["val_acc"] == pytest.approx(0.8)
    assert selected["search"][0]["val_acc_by_seed"] == {0: 0.9, 5: 0.5}
    assert selected["config"]["seed"] == 0 and selected["config"]["label"] == "adamw_c1"
    with pytest.raises(ValueError, match="search_seeds must be one or more distinct seeds"):
        tune.run_tune(base, ["adamw"], tmp_path / "t", search_seeds=[1, 1])


def test_a_directory_tuned_before_several_search_seeds_still_resumes(tmp_path):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    old = {"base": dataclasses.asdict(base), "budget": 2, "search_seed": 0, "methods": ["adamw"]}
    (tmp_path / "protocol.json").write_text(json.dumps(old))
    points = tune._points_of(tmp_path)
    assert points == "per_method"  # searched before the points were shared: its runs keep their configurations
    tune._check_same_protocol(tmp_path, tune._protocol_key(base, ["adamw"], 2, [0], points=points))  # the same
    with pytest.raises(ValueError, match="another search_seeds"):
        tune._check_same_protocol(tmp_path, tune._protocol_key(base, ["adamw"], 2, [0, 1], points=points))
    with pytest.raises(ValueError, match="another points"):
        tune._check_same_protocol(tmp_path, tune._protocol_key(base, ["adamw"], 2, [0]))


def test_the_tune_command_lists_every_search_space(capsys):
    from normctl_lab.cli import main

    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse may wrap a name at its hyphen
    assert all(name in text for name in search_spaces.SEARCH_SPACES)


def test_the_tail_rise_of_the_final_runs_is_summarised_and_tabled(tmp_path):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    runs = [(f"sgd_s{s}", with_overrides(base, [f"seed={s}"])) for s in (0, 1)]
    for (name, _), rise in zip(runs, [1.2, 1.4]):
        (tmp_path / name).mkdir()
        final = {"status": "finished", "tail_rise": {"group/normalized/grad_norm": rise, "global/grad_norm": None}}
        (tmp_path / name / "final.json").write_text(json.dumps(final))
    rises = tune._tail_rises(tmp_path, runs)
    assert list(rises) == ["group/normalized/grad_norm"]  # a key some run has no number for is left out
    assert rises["group/normalized/grad_norm"]["mean"] == pytest.approx(1.3)
    row = {"test_acc": {"mean": 0.9, "std": 0.01, "n": 2}, "knobs": {"lr": 0.1}, "at_edge": [], "tail_rise": rises}
    summary = {
        "protocol": {"reported_on": "test_acc", "reference": "sgd", "selected_on": "selection_acc"},
        "methods": {"sgd": row},
    }
    table = tune_report.summary_table(summary)
    assert "grad-norm tail rise" in table and "| 1.300 ± 0.141 |" in table


def test_the_loss_beside_the_accuracy_is_left_out_where_a_run_did_not_store_it(tmp_path):
    # finals trained before classifiers stored their held-out loss: no mean of the seeds that have
    # it, no column; a diverged run's missing loss is a NaN, as in the reported metric
    base = with_overrides(RunConfig(), TINY_VORONOI)
    final = {
        m: ({}, [(f"{m}_s{s}", with_overrides(base, [f"seed={s}"])) for s in (1, 2, 3)]) for m in ("adamw", "adamc")
    }
    for m, (_, runs) in final.items():
        for name, cfg in runs:
            (tmp_path / name).mkdir()
            stored = {"status": "finished", "test_acc": 0.5, "test_loss": 1.0 + cfg.seed / 10}
            if (m, cfg.seed) == ("adamw", 3):
                stored = {"status": "finished", "test_acc": 0.5}  # trained before the loss was stored
            if (m, cfg.seed) == ("adamc", 2):
                stored = {"status": "diverged"}
            (tmp_path / name / "final.json").write_text(json.dumps(stored))
    rows = tune._beside(tmp_path, final, "test_loss", ["adamw"])
    assert rows.get("adamw", {}) == {}
    adamc = rows["adamc"]
    assert adamc["test_loss_by_seed"][1] == pytest.approx(1.1) and math.isnan(adamc["test_loss_by_seed"][2])
    assert "minus_adamw_test_loss" not in adamc  # nothing to pair with
    row = {"test_acc": {"mean": 0.5, "std": 0.0, "n": 3}, "knobs": {}, "at_edge": [], "tail_rise": {}}
    protocol = {"reported_on": "test_acc", "reported_beside": "test_loss", "reference": "adamw",
                "selected_on": "val_acc", "higher_is_better": True}  # fmt: skip
    table = tune_report.summary_table({"protocol": protocol, "methods": {"adamw": row, "adamc": row | adamc}})
    assert "test_loss" not in table  # a column only where every method has the loss


def test_a_directory_written_before_a_config_field_existed_still_resumes(tmp_path):
    base = with_overrides(RunConfig(), TINY_VORONOI)
    saved = tune._protocol_key(base, ["adamw"], 2, [0])
    del saved["base"]["auto_run_length"]  # written before the field was added
    (tmp_path / "protocol.json").write_text(json.dumps(saved))
    tune._check_same_protocol(tmp_path, tune._protocol_key(base, ["adamw"], 2, [0]))  # at its default: the same
    with pytest.raises(ValueError, match="another base"):
        changed = with_overrides(base, ["auto_run_length=true"])
        tune._check_same_protocol(tmp_path, tune._protocol_key(changed, ["adamw"], 2, [0]))


def test_verdict_words_follow_from_the_interval_alone():
    def diff(mean, low, high):
        return {"mean": mean, "ci95": [low, high], "seeds": [1, 2, 3]}

    # Yu's min decay: -0.0182 [-0.0277, -0.0087]: worse, and "not within 0.01" cannot be said
    said = tune_report.verdict("min", "l2", diff(-0.0182, -0.0277, -0.0087), higher_is_better=True, margin=0.01)
    assert said.startswith("min is worse than l2") and "not decided (the interval crosses ±0.01)" in said
    said = tune_report.verdict("a", "b", diff(-0.03, -0.04, -0.02), higher_is_better=True, margin=0.01)
    assert "not within ±0.01" in said
    said = tune_report.verdict("a", "b", diff(0.001, -0.004, 0.006), higher_is_better=True, margin=0.01)
    assert "level" in said and "within ±0.01" in said and "not" not in said.split(";")[1]
    assert "better" in tune_report.verdict("a", "b", diff(-0.05, -0.08, -0.02), higher_is_better=False)
    assert "not decided" in tune_report.verdict(
        "a", "b", {"mean": 0.1, "ci95": None, "seeds": [1]}, higher_is_better=True
    )


def test_a_space_whose_name_holds_a_plus_is_told_from_a_field_fixed_after_a_name():
    assert search_spaces.search_space("muon+wn") == search_spaces.SEARCH_SPACES["muon+wn"]
    auto = search_spaces.search_space("muon+wn-auto")  # its own space, not "muon+wn" and a field
    assert auto.fixed["auto_alignment"] == "true" and [k.field for k in auto.knobs] == ["lr", "auto_decay"]
    fixed = search_spaces.search_space("muon+wn+rate=0.05")
    assert fixed.fixed["rate"] == "0.05" and fixed.fixed["method"] == "muon+wn"
    assert search_spaces.search_space("adamw+decay=min").fixed["decay"] == "min"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        search_spaces.search_space("muon+c")


def test_differences_against_a_second_method_are_tabled_and_worded(tmp_path):
    def diff(mean, low, high):
        return {"mean": mean, "ci95": [low, high], "seeds": [1, 2, 3], "differences": [mean] * 3}

    protocol = {"reported_on": "test_loss", "reference": "adamw", "also_against": ["muon"],
                "selected_on": "selection_loss", "higher_is_better": False}  # fmt: skip
    row = {"test_loss": {"mean": 1.4, "std": 0.01, "n": 3}, "knobs": {"lr": 0.01}, "at_edge": [], "tail_rise": {}}
    summary = {
        "protocol": protocol,
        "methods": {
            "adamw": row,
            "muon": row | {"minus_adamw": diff(-0.3, -0.5, -0.1)},
            "muonc": row | {"minus_adamw": diff(-0.3, -0.5, -0.1), "minus_muon": diff(0.004, -0.002, 0.01)},
        },
    }
    table = tune_report.summary_table(summary)
    assert "| − adamw [95 % CI] | − muon [95 % CI] |" in table
    assert "| muonc | 3 | 1.4000 ± 0.0100 | -0.3000 [-0.5000, -0.1000] | +0.0040 [-0.0020, +0.0100] |" in table
    said = tune_report.verdicts(summary)
    assert any(s.startswith("muonc and muon are level") for s in said)
    assert any(s.startswith("muon is better than adamw") for s in said)
    with pytest.raises(ValueError, match="also_against"):
        tune.run_tune(
            with_overrides(RunConfig(), TINY_VORONOI), ["adamw", "adamc"], tmp_path / "t", also_against=["sgd"]
        )
    assert not (tmp_path / "t").exists()  # refused before anything was written
