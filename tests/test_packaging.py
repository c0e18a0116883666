"""The library and the lab are separate packages: ``pip install normctl`` carries no harness and no data."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import normctl
from normctl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_library_wheel_holds_neither_the_lab_nor_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("normctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n == "normctl/optim/adamwn.py" for n in names)
    assert not [n for n in names if n.startswith("normctl_lab") or "/experiments/" in n or "/data/" in n]
    assert not [n for n in names if n.endswith((".xz", ".gz"))]


def test_importing_the_library_imports_nothing_of_the_lab():
    code = (
        "import sys, normctl, normctl.cli, normctl.report; "
        "print(sorted(m for m in sys.modules if m.startswith('normctl_lab')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_the_library_command_points_lab_commands_to_the_lab(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "x"])
    assert "normctl-lab train" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"normctl {normctl.__version__}"
