"""scripts/pack_results.py: thins finished runs' records, never touches a run still training."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pack_results.py"


def write_run(folder: Path, records: int, finished: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in range(records)))
    if finished:
        (folder / "final.json").write_text("{}")
    return folder


def test_finished_runs_keep_every_nth_and_the_last_record_and_unfinished_runs_are_left(tmp_path):
    done = write_run(tmp_path / "done", 10, finished=True)
    running = write_run(tmp_path / "running", 10, finished=False)
    before = (running / "metrics.jsonl").read_text()
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--keep-every", "4"], capture_output=True, text=True, check=True
    ).stdout
    kept = [json.loads(line)["step"] for line in gzip.decompress((done / "metrics.jsonl.gz").read_bytes()).splitlines()]
    assert kept == [0, 4, 8, 9] and not (done / "metrics.jsonl").exists()
    assert (running / "metrics.jsonl").read_text() == before and not (running / "metrics.jsonl.gz").exists()
    assert "running: not finished" in out
