import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _work_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own temporary directory, so a default output path (the demo's
    ``runs/demo``) can never overwrite what a user keeps in the working tree."""
    monkeypatch.chdir(tmp_path)
