"""The Voronoi environment and model of SPEC §3, and the runner of wrapped methods."""

import json

import pytest
import torch
from normctl_lab.cli import main
from normctl_lab.demo import DemoConfig, run_demo
from normctl_lab.voronoi import VoronoiModel, VoronoiTask, accuracy
from normctl_lab.voronoi_runs import VoronoiRunConfig, run_voronoi


def test_task_follows_the_labelling_rule_and_is_fixed_by_its_seed():
    task = VoronoiTask(held_out=500)
    assert 100 <= len(task.centres) <= 150
    assert task.centres.abs().max() <= 100 and set(task.centre_classes.tolist()) == {0, 1}
    x, y = task.val
    assert x.shape == (500, 2) and x.abs().max() <= 100
    for i in range(20):  # brute force: argmin_j (x·c_j/‖c_j‖² − 1)²
        scores = [((x[i] @ c) / (c @ c) - 1) ** 2 for c in task.centres]
        assert y[i] == task.centre_classes[int(torch.stack(scores).argmin())]
    again = VoronoiTask(held_out=500)
    assert torch.equal(again.centres, task.centres) and torch.equal(again.test[0], task.test[0])
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(task.batch(8, g)[0], task.batch(8, g)[0])  # fresh points every step


def test_model_has_no_biases_and_the_described_layout():
    model = VoronoiModel(hidden=64)
    names = [n for n, _ in model.named_parameters()]
    assert not any("bias" in n for n in names)
    assert [n for n in names if n.endswith("fc1.weight") or n.endswith("fc2.weight")] == [
        "dense_in.fc1.weight",
        "dense_in.fc2.weight",
        "dense_out.fc1.weight",
        "dense_out.fc2.weight",
    ]
    assert model(torch.randn(5, 2) * 100).shape == (5, 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        VoronoiModel(activation="tanh")
    assert 0.0 <= accuracy(model, VoronoiTask(held_out=100).val) <= 1.0


def test_wrapped_methods_run_on_voronoi_and_gpt(tmp_path, capsys):
    methods = ("adamw", "adam+wn", "sgd+wn", "lion+wn")
    results = run_voronoi(
        VoronoiRunConfig(
            methods=methods, steps=4, batch_size=64, hidden=32, monitor_every=2, out_dir=str(tmp_path / "v")
        ),
        verbose=False,
    )
    assert [r["method"] for r in results] == list(methods)
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert list(summary["methods"]) == list(methods) and summary["methods"]["adamw"] == results[0]
    assert (tmp_path / "v" / "lion+wn" / "metrics.jsonl").is_file()
    assert json.loads((tmp_path / "v" / "lion+wn" / "environment.json").read_text())["torch"] == torch.__version__
    assert (
        json.loads((tmp_path / "v" / "lion+wn" / "final.json").read_text()) == results[-1]
    )  # finished, and what it measured
    gpt = run_demo(
        DemoConfig(steps=3, n_layer=1, n_embd=32, eval_batches=1, warmup=1, methods=methods, seeds=(0,), out_dir=None),
        verbose=False,
    )
    assert [r.method for r in gpt] == list(methods)
    with pytest.raises(SystemExit) as exit_info:
        main(["voronoi", "--methods", "adamw,nope", "--steps", "1"])
    assert exit_info.value.code == 2 and "unknown methods ['nope']" in capsys.readouterr().err
