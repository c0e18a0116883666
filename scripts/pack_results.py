"""Pack run directories for committing: keep every Nth monitor record, gzip metrics.jsonl.

    python scripts/pack_results.py results/repro_gpt --keep-every 4

The full-resolution metrics of a 2 500-step run are ~5 MB of JSON; a results folder holds the
records every 100 steps or so, gzipped (``normctl report`` and ``load_run`` read either form).
The last record is always kept: final values and tail scores are computed from it. A run
without ``final.json`` is still training (or stopped, to be resumed) and is left alone: packing
would drop the records it appends to.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from normctl.monitor.sinks import read_jsonl


def pack(run_dir: Path, keep_every: int) -> tuple[int, int]:
    source = run_dir / "metrics.jsonl"
    records = read_jsonl(source)
    kept = [r for i, r in enumerate(records) if i % keep_every == 0 or i == len(records) - 1]
    packed = run_dir / "metrics.jsonl.gz"
    packed.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in kept).encode(), mtime=0))
    size = source.stat().st_size
    source.unlink()
    return size, packed.stat().st_size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--keep-every", type=int, default=4)
    args = parser.parse_args()
    for folder in args.folders:
        for metrics in sorted(folder.glob("*/metrics.jsonl")):
            if not (metrics.parent / "final.json").exists():
                print(f"{metrics.parent}: not finished (no final.json), left as it is")
                continue
            before, after = pack(metrics.parent, args.keep_every)
            print(f"{metrics.parent}: {before / 1e6:.1f} MB -> {after / 1e6:.2f} MB")
