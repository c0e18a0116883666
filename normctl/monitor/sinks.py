"""Where monitor records go: JSONL / CSV files in a run directory, TensorBoard, memory.

A record is a flat dict ``{"step": int, "<scope>/<name>/<metric>": float, ...}``. Every sink
has ``write(record)`` and ``close()``; files are flushed after each record so that a run
killed mid-way leaves readable metrics.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..distributed import is_writer
from .scalars import TRACKER_METRICS, TRACKER_SCOPES, select_scalars

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
RUN_JSON = "run.json"  # a library run's label and seed, and whether its monitor was closed


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class MemorySink:
    """Keeps every record in ``self.records`` (tests, notebooks)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        pass

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric across the records that have it."""
        pairs = [(r["step"], r[key]) for r in self.records if r.get(key) is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]


class JsonlSink:
    """One JSON object per line in ``RUN_DIR/metrics.jsonl``.

    A file that already holds records is refused: two runs appended to one file read as one run
    whose steps jump back. ``resume=True`` continues such a file (a resumed run), and every
    record must then come after the file's last step.

    ``label`` and ``seed`` go to ``RUN_DIR/run.json``, which ``normctl report`` reads to put the
    seeds of one method on one curve (``label``: the method, or any name for the configuration);
    ``close()`` marks the run there as ended, which the report shows as ``finished``. Under
    ``torchrun`` the process of ``rank`` (0; None: every process, each to a directory of its own)
    writes the files."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume: bool = False,
        rank: int | None = 0,
        label: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / METRICS_JSONL
        self._file: Any = None
        if not is_writer(rank):
            return
        existing = read_jsonl(self.path) if self.path.is_file() else []
        if existing and not resume:
            raise FileExistsError(
                f"{self.path} already holds {len(existing)} records (steps {existing[0]['step']} to "
                f"{existing[-1]['step']}); log into another directory, or pass resume=True to continue it"
            )
        self._last_step = existing[-1]["step"] if existing else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._about = self.path.parent / RUN_JSON
        known = json.loads(self._about.read_text()) if resume and self._about.is_file() else {}
        given = {k: v for k, v in (("label", label), ("seed", seed)) if v is not None}
        self._write_about({k: v for k, v in known.items() if k != "ended"} | given)
        self._file = self.path.open("a", encoding="utf-8")

    def _write_about(self, about: dict[str, Any]) -> None:
        temporary = self._about.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(about), encoding="utf-8")
        temporary.replace(self._about)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        step = record["step"]
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"{self.path}: a record for step {step} cannot follow step {self._last_step}")
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
        }  # strict JSON has no NaN/Infinity
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self._last_step = step

    def drop_after(self, step: int) -> None:
        """Remove the records after ``step``, with a warning that counts them: a run resumed from
        its checkpoint at ``step`` writes those steps again. The file is replaced atomically."""
        if self._file is None:
            return
        records = read_jsonl(self.path)
        kept = [r for r in records if r["step"] <= step]
        if len(kept) == len(records):
            return
        warnings.warn(
            f"{self.path}: {len(records) - len(kept)} records after step {step} dropped: "
            f"the run resumes from its checkpoint at step {step} and writes them again",
            stacklevel=2,
        )
        self._file.close()
        temporary = self.path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        temporary.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._last_step = kept[-1]["step"] if kept else None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            about = json.loads(self._about.read_text()) if self._about.is_file() else {}
            self._write_about(about | {"ended": True, "last_step": self._last_step})
            self._file = None


class CsvSink:
    """``RUN_DIR/metrics.csv``, one column per metric.

    The header is the first record's keys. A record with keys the header lacks (an automatic
    target's ``target_norm`` once it is set, ``loss`` after a first step without one) widens it:
    the file is rewritten with the new columns, earlier rows left empty there — a logger never
    stops a run. A file that already holds rows is refused, as :class:`JsonlSink` refuses one;
    ``resume=True`` continues it."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False, rank: int | None = 0) -> None:
        self.path = Path(run_dir) / METRICS_CSV
        self._fields: list[str] = []
        self._file: Any = None
        if not is_writer(rank):  # under torchrun one process writes the file (rank None: each its own)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            if not resume:
                raise FileExistsError(
                    f"{self.path} already holds records; log into another directory, or pass resume=True to continue it"
                )
            with self.path.open(newline="", encoding="utf-8") as existing:
                self._fields = next(csv.reader(existing), [])
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self._fields, restval="")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        new = [k for k in record if k not in self._fields]
        if new:
            self._widen(self._fields + new)
        self._writer.writerow(record)
        self._file.flush()

    def _widen(self, fields: list[str]) -> None:
        """Rewrite the file under the header ``fields`` (atomically: a run killed meanwhile
        keeps the old file)."""
        self._file.close()
        with self.path.open(newline="", encoding="utf-8") as existing:
            rows = list(csv.DictReader(existing))
        temporary = self.path.with_suffix(".csv.tmp")
        with temporary.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(self.path)
        self._fields = fields
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=fields, restval="")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TensorBoardSink:
    """Scalars to TensorBoard event files (needs the ``tensorboard`` package).

    By default the headline of :mod:`normctl.monitor.scalars` (global and per-group norms,
    ratios, predictions) and the loss; ``scopes`` and ``metrics`` choose others (``None``: all,
    which is one chart per tensor and metric)."""

    def __init__(
        self,
        log_dir: str | Path,
        *,
        scopes: Iterable[str] | None = TRACKER_SCOPES,
        metrics: Iterable[str] | None = TRACKER_METRICS,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoardSink needs tensorboard: pip install 'normctl[tensorboard]'") from error
        self.scopes = None if scopes is None else tuple(scopes)
        self.metrics = None if metrics is None else tuple(metrics)
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        scalars = select_scalars(record, self.scopes, self.metrics)
        if isinstance(record.get("loss"), (int, float)):
            scalars["loss"] = record["loss"]
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, or of its gzipped ``.gz`` form. A torn last line
    (a run killed mid-write) is skipped quietly; a line anywhere else that does not parse is
    skipped with a warning naming its line number."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = raw.decode("utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}: line {number} is not valid JSON and was skipped", stacklevel=2)
    return records
