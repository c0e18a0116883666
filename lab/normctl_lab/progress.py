"""Progress bars for long training work: tqdm's, where it is installed and the output is a terminal.

A bar redraws one line in place, which suits a terminal and garbles a log file, so a bar is
shown only when its stream is a terminal (tqdm's ``disable=None``); logs and CI get the
harness's plain lines instead (one per checkpoint, one per finished run). tqdm is optional
(``pip install normctl[progress]``): without it every bar is silent and the lines remain.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """A bar over ``total`` units, or none; ``note`` prints a line either way unless ``quiet``."""

    def __init__(self, bar: Any = None, *, quiet: bool = False) -> None:
        self._bar, self._quiet = bar, quiet

    @property
    def shown(self) -> bool:
        return self._bar is not None and not self._bar.disable

    @property
    def count(self) -> int | None:
        """Units done so far on the bar (``None`` without one)."""
        return self._bar.n if self.shown else None

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.shown:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def note(self, line: str) -> None:
        """Print ``line`` to stdout, clearing the bar (on stderr) around it so neither garbles the other."""
        if self.shown:
            self._bar.write(line)
        elif not self._quiet:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    total: int,
    *,
    initial: int = 0,
    desc: str = "",
    unit: str = "step",
    enabled: bool = True,
    file: TextIO | None = None,
) -> Progress:
    """A tqdm bar from ``initial`` to ``total`` on ``file`` (stderr), when ``enabled``, tqdm is
    installed and ``file`` is a terminal; otherwise a :class:`Progress` that only prints notes."""
    if not enabled:
        return Progress(quiet=True)
    try:
        from tqdm import tqdm
    except ImportError:
        return Progress()
    bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=file or sys.stderr,
        disable=None,  # shown on a terminal only
        dynamic_ncols=True,
        leave=False,
    )
    return Progress(bar)
