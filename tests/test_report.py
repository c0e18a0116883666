"""The HTML report: built from monitored run directories, rendered in headless Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from normctl import AdamC, param_groups
from normctl.cli import main
from normctl.monitor import JsonlSink, NormMonitor
from normctl.report import build_report, load_run

pytest.importorskip("matplotlib")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_run(run_dir: Path, method: str, seed: int, steps: int = 40) -> Path:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    groups = param_groups(model, weight_decay=0.05)
    opt = AdamC(groups, lr=1e-2) if method == "adamc" else torch.optim.AdamW(groups, lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"method": method, "seed": seed}))
    with NormMonitor(model, opt, every=4, sinks=[JsonlSink(run_dir)]) as monitor:
        for _ in range(steps):
            x = torch.randn(32, 8)
            loss = (model(x) - x.sum(1, keepdim=True)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.observe(loss=loss)
            sched.step()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root / f"{m}-s{s}", m, s) for m in ("adamw", "adamc") for s in (0, 1)]


def test_report_has_summary_tables_and_embedded_images(runs, tmp_path):
    path = build_report(runs, tmp_path / "report.html")
    page = path.read_text()
    assert page.count('src="data:image/png;base64,') >= 5
    assert re.search(r'<table id="methods">.*adamw.*adamc', page, re.S)
    assert page.count('<table id="methods">') == page.count('<table id="runs">') == 1
    assert '<table id="phases-adamw">' in page and '<table id="phases-adamc">' in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch
    run = load_run(runs[0])
    summary = run.summary()
    assert summary["method"] == "adamw" and summary["seed"] == 0 and summary["steps"] == 37
    assert summary["last train loss"] == run.records[-1]["loss"]
    phases = run.layer_phases()
    assert [row["tensor"] for row in phases] == ["0.weight", "2.weight"]  # the decayed matrices


def test_report_groups_runs_by_the_labels_given(runs, tmp_path):
    # e.g. the variants of an ablation grid, all trained with one method: by method they would pool
    labels = ["variant a", "variant b", "variant b", "variant a"]
    page = build_report(runs, tmp_path / "report.html", labels=labels).read_text()
    methods = re.search(r'<table id="methods">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td>", methods) == [("variant a", "2"), ("variant b", "2")]
    assert "phases-variant a" in page and "phases-adamw" not in page
    with pytest.raises(ValueError, match="labels must name one group per run: 3 labels for 4 runs"):
        build_report(runs, tmp_path / "other.html", labels=labels[:3])
    assert not (tmp_path / "other.html").exists()


def test_curves_with_many_groups_put_the_legend_beside_the_axes(runs):
    from normctl.report import plots

    many = [load_run(runs[i % len(runs)]) for i in range(12)]
    for i, run in enumerate(many):
        run.label = f"group {i}"
    fig = plots.curves(many, "loss", "training loss")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 12 and len(ax.get_legend().get_texts()) == 12
    assert ax.get_lines()[0].get_linestyle() != ax.get_lines()[10].get_linestyle()  # the colours came round
    fig.canvas.draw()
    legend_box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # beside the curves, not over them
    few = plots.curves([load_run(r) for r in runs], "loss", "training loss")
    few.canvas.draw()
    assert few.axes[0].get_legend().get_window_extent().x1 <= few.axes[0].get_window_extent().x1


def test_cli_report_and_missing_run_dir(runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", *map(str, runs), "-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and "nope does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "empty")])
    assert "is not a run directory: metrics.jsonl is missing" in capsys.readouterr().err


def rendered_dom(browser: str, page: Path, tmp_path: Path) -> str:
    """The page's DOM after headless Chromium has loaded it and run its scripts."""
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run(
        [browser, *flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    path = build_report(runs, tmp_path / "report.html")
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = rendered_dom(browser, path, tmp_path)
    images = dom.count("<img ")
    assert images >= 5 and dom.count('data-loaded="1"') == images  # every image decoded
    assert '<table id="methods">' in dom and '<table id="runs">' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,1600", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_drawing_a_report_leaves_the_users_matplotlib_backend_alone(runs, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # as a notebook or a GUI session would have its own
    try:
        build_report(runs, tmp_path / "report.html")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


# -- damaged or mixed-up run directories ---------------------------------------------------------


def copy_run(run: Path, destination: Path) -> Path:
    shutil.copytree(run, destination)
    return destination


def test_the_report_without_matplotlib_names_the_extra(runs, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs[0]), "-o", str(tmp_path / "r.html")])
    assert exit_info.value.code == 2 and "pip install 'normctl[plots]'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("content", [b"", b'{"step": 4, "lo'], ids=["empty", "one torn line"])
def test_a_metrics_file_without_records_is_an_error(runs, tmp_path, content):
    run = copy_run(runs[0], tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match="holds no records"):
        load_run(run)


def test_a_corrupt_middle_line_is_skipped_with_a_warning_naming_it(runs, tmp_path):
    run = copy_run(runs[0], tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="line 3 is not valid JSON"):
        loaded = load_run(run)
    assert len(loaded.records) == len(lines) - 1


def test_two_runs_in_one_metrics_file_are_refused(runs, tmp_path):
    run = copy_run(runs[0], tmp_path / "run")
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + text)  # a second run appended to the first
    with pytest.raises(ValueError, match=r"step 1 follows step 37; the file holds more than one run"):
        load_run(run)


def test_jsonl_sink_refuses_to_append_a_new_run_and_resumes_only_forward(runs, tmp_path):
    run = copy_run(runs[0], tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="already holds 10 records .steps 1 to 37.*resume=True"):
        JsonlSink(run)
    assert (run / "metrics.jsonl").read_text() == before
    sink = JsonlSink(run, resume=True)
    with pytest.raises(ValueError, match="a record for step 37 cannot follow step 37"):
        sink.write({"step": 37, "loss": 1.0})
    sink.write({"step": 44, "loss": float("nan")})
    sink.close()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) == {"step": 44, "loss": None}


def test_ratio_plot_labels_every_layer_and_each_prediction_once(runs):
    from normctl.report import plots

    adamc = next(load_run(r) for r in runs if load_run(r).label == "adamc")
    fig = plots.ratio_vs_prediction(adamc)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    keys = [k for k in adamc.keys("tensor", "pred_ratio") if adamc.series(k)[0]]  # the decayed tensors
    layers = [k[len("tensor/") : -len("/pred_ratio")] for k in keys]
    predictions = [t for t in texts if t.startswith("predicted steady state")]
    assert set(layers) <= set(texts)  # every layer's line is named
    assert len(predictions) == len(set(predictions)) >= 1  # one label per distinct prediction
    distinct = {tuple(adamc.series(f"tensor/{name}/pred_ratio")[1]) for name in layers}
    assert len(predictions) == len(distinct)


def test_an_interactive_report_draws_the_run_charts_with_plotly_in_one_offline_file(runs, tmp_path):
    pytest.importorskip("plotly")
    path = build_report(runs, tmp_path / "report.html", interactive=True)
    page = path.read_text()
    groups = {k for r in runs for k in load_run(r).keys("group", "norm_ratio")}
    # loss, gradient norm, global norm ratio, and each param group's norm ratio
    assert groups and page.count('class="plotly-graph-div"') == 3 + min(4, len(groups))
    assert page.count("window.PlotlyConfig") == 1  # plotly.js written once, into the page
    assert not re.search(r"<script[^>]*\bsrc=", page) and '"name":"adamw (2 seeds)"' in page  # nothing to fetch
    assert page.count('src="data:image/png;base64,') >= 2  # the per-layer figures stay images
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is not None:
        assert rendered_dom(browser, path, tmp_path).count('class="main-svg"') >= 3  # plotly drew every chart


def test_an_interactive_report_without_plotly_names_the_extra(runs, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs[0]), "-o", str(tmp_path / "r.html"), "--interactive"])
    assert exit_info.value.code == 2 and "pip install 'normctl[interactive]'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_library_run_reports_every_panel_with_its_seeds_grouped_and_its_end_known(tmp_path):
    """NormMonitor + JsonlSink, no lab: AdamWN's panel of norms against targets (it has no
    steady-state prediction), per-group norm ratios, seeds on one curve, status finished."""
    pytest.importorskip("matplotlib")
    from normctl import AdamWN, param_groups
    from normctl.monitor import JsonlSink, NormMonitor

    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        optimizer = AdamWN(param_groups(model, control_output=True), lr=1e-2, target=1.5)  # every matrix held
        run_dir = tmp_path / f"adamwn-s{seed}"
        with NormMonitor(model, optimizer, every=2, sinks=[JsonlSink(run_dir, label="adamwn", seed=seed)]) as monitor:
            for _ in range(10):
                loss = model(torch.randn(8, 4)).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                monitor.observe(loss=loss)
        dirs.append(run_dir)
    runs = [load_run(d) for d in dirs]
    assert [r.status for r in runs] == ["finished", "finished"] and {r.label for r in runs} == {"adamwn"}
    from normctl.report.html import method_summary

    assert [(row["method"], row["seeds"]) for row in method_summary(runs)] == [("adamwn", 2)]  # one curve
    page = build_report(dirs, tmp_path / "report.html").read_text()
    assert "norms against their targets" in page and "no steady-state ratio to predict" in page
    assert "Weight norm ratio of the decay group" in page
    with pytest.raises(ValueError, match="is given twice"):
        build_report([dirs[0], dirs[0]], tmp_path / "twice.html")
