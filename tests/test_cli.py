"""The command lines as a new user meets them: help, typos, warnings."""

import dataclasses
import subprocess
import sys

import pytest
from normctl_lab.cli import main
from normctl_lab.config import RunConfig, field_help, with_overrides


def test_train_help_lists_every_config_field_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(RunConfig):
        line = next(line for line in out.splitlines() if line.startswith(f"  {f.name} ("))
        assert f"default {f.default!r}): " in line and len(line.split("): ", 1)[1]) > 5, line
    assert field_help().splitlines()[0] in out


def test_a_misspelt_field_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown config field 'stpes': did you mean steps"):
        with_overrides(RunConfig(), ["stpes=3"])
    with pytest.raises(ValueError, match=r"unknown config field 'zzz': \(`normctl-lab train --help`"):
        with_overrides(RunConfig(), ["zzz=3"])


def test_help_texts_name_papers_not_internal_labels(capsys):
    for command in ([], ["repro-gpt"], ["repro-voronoi"], ["voronoi"], ["train"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
    out = capsys.readouterr().out
    assert "SPEC" not in out and "seed 00" not in out.lower()
    assert "Yu (2022)" in out and "Loshchilov (2023)" in out


@pytest.mark.parametrize("module", ["normctl", "normctl_lab"])
def test_importing_without_numpy_prints_no_warning(module):
    """torch warns "Failed to initialize NumPy" at import where NumPy is missing; the commands
    import it through normctl, which keeps that warning out of every command's output."""
    code = f"import sys; sys.modules['numpy'] = None; import {module}"
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True)
    assert "NumPy" not in done.stderr, done.stderr


def test_the_kernel_build_is_keyed_by_the_environment(monkeypatch):
    """Two environments sharing torch's extension cache (another torch, another normctl, another
    Python) get different build names, so neither evicts the other's build."""
    import torch

    import normctl
    from normctl.optim import _one_pass_cpu

    name, flags = _one_pass_cpu._build_flags()
    assert _one_pass_cpu._build_flags() == (name, flags)  # stable within an environment
    for module, attribute, value in [(torch, "__version__", "9.9.9"), (normctl, "__version__", "0.0.1")]:
        with monkeypatch.context() as m:
            m.setattr(module, attribute, value)
            assert _one_pass_cpu._build_flags()[0] != name
    with monkeypatch.context() as m:
        m.setattr(_one_pass_cpu.sys, "version", "3.99.0")
        assert _one_pass_cpu._build_flags()[0] != name


def test_every_build_is_announced(monkeypatch, capsys):
    from torch.utils import cpp_extension

    from normctl.optim import _one_pass_cpu

    monkeypatch.setattr(_one_pass_cpu, "_state", {"extension": None, "failed": False})
    monkeypatch.setattr(_one_pass_cpu, "_is_built", lambda *a: False)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: "built")
    assert _one_pass_cpu.kernel() == "built"
    assert "building AdamWN's one-pass CPU kernel normctl_adamwn_one_pass_" in capsys.readouterr().err


def test_doctor_names_each_optimizers_path_and_why(capsys):
    from normctl.cli import main as normctl_main

    assert normctl_main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch 2." in out and "one-pass CPU kernel:" in out
    for line in [line for line in out.splitlines() if line.startswith("AdamWN cpu")]:
        path, reason = line.split(": ", 1)[1].split(" — ")
        assert path in {"cpu_one_pass", "torch_fused", "foreach", "reference"} and reason
    assert "AdamWN cpu float64 tensor: torch_fused" in out  # no one-pass kernel takes float64


def test_step_paths_follow_the_settings():
    import torch

    import normctl
    from normctl.optim._adamwn_paths import Path

    def path(**kwargs):
        p = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
        p.grad = torch.ones_like(p)
        optimizer = normctl.AdamWN([dict(params=[p], **kwargs.pop("group", {}))], **{"lr": 1e-3, **kwargs})
        optimizer.step()
        (choice,) = optimizer.step_paths()
        return choice.path

    assert path() is Path.TORCH_FUSED
    assert path(fused=False) is Path.FOREACH
    assert path(fused=False, foreach=False) is Path.REFERENCE
    assert path(foreach=True) is Path.FOREACH
    assert path(lr=0.0) is Path.FOREACH
    assert path(group=dict(control=False, weight_decay=0.1, decay="l1")) is Path.FOREACH
    assert path(group=dict(control=False, weight_decay=0.1)) is Path.TORCH_FUSED
