"""Progress output: a tqdm bar on a terminal, plain lines in a log, nothing when quiet."""

import io
import sys

import pytest
from normctl_lab.config import RunConfig, with_overrides
from normctl_lab.progress import progress
from normctl_lab.train import train

pytest.importorskip("tqdm")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal_and_counts_from_initial(capsys):
    out = Terminal()
    with progress(10, initial=4, desc="run", file=out) as bar:
        assert bar.shown
        bar.update(3, loss="0.5")
        assert bar.count == 7
        bar.note("checkpoint")
    assert "4/10" in out.getvalue() and "run" in out.getvalue()
    assert capsys.readouterr().out == "checkpoint\n"  # lines stay on stdout, for logs


def test_log_files_get_plain_lines_and_no_bar(capsys):
    log = io.StringIO()  # not a terminal
    with progress(10, file=log) as bar:
        assert not bar.shown
        bar.update(5)
        bar.note("step 5/10")
    assert log.getvalue() == ""
    assert capsys.readouterr().out == "step 5/10\n"


def test_quiet_prints_nothing(capsys):
    with progress(10, enabled=False) as bar:
        bar.update(5)
        bar.note("step 5/10")
    assert capsys.readouterr().out == ""


def test_without_tqdm_the_lines_remain(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    with progress(10) as bar:
        assert not bar.shown
        bar.update(5)
        bar.note("step 5/10")
    assert capsys.readouterr().out == "step 5/10\n"


def test_training_draws_a_bar_on_a_terminal_and_keeps_its_checkpoint_lines(tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    tiny = ["task=voronoi", "steps=6", "checkpoint_every=3", "hidden=16", "batch_size=32", "schedule=constant"]
    cfg = with_overrides(RunConfig(), tiny)
    train(cfg, tmp_path, verbose=True)
    bar = terminal.getvalue()
    assert "6/6" in bar and tmp_path.name in bar
    lines = capsys.readouterr().out
    assert "step 3/6" in lines and "step 6/6" in lines and "step 3/6" not in bar
