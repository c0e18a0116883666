"""The child processes of ``--workers N``: started in their own session, stopped by the parent.

A sweep's runs train in child processes. Each starts in a session of its own, so a terminal's
Ctrl-C (SIGINT to the foreground process group) and a ``kill`` of the sweep (SIGTERM, which
:func:`terminate_as_interrupt` turns into the same ``KeyboardInterrupt``) reach the parent
alone, and the parent hands each child one SIGINT: the child stops as an interrupted
``normctl-lab train`` does, its last checkpoint kept, and the same command resumes it. Without
this, a SIGTERM to the sweep left its children training on, unseen, beside whatever ran next.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator


class ChildProcesses:
    """The running children of one sweep; after :meth:`interrupt` no new one starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, command: list[str], env: dict[str, str]) -> tuple[int, str] | None:
        """Run ``command`` to its end: (exit code, stderr), or None where the sweep was interrupted
        before it could start."""
        with self._lock:
            if self._stopped:
                return None
            child = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            self._running.add(child)
        try:
            _, stderr = child.communicate()
        finally:
            with self._lock:
                self._running.discard(child)
        return child.returncode, stderr

    def interrupt(self) -> None:
        """One SIGINT to every running child (each saves nothing new: it stops at its last
        checkpoint), and no new child after it."""
        with self._lock:
            self._stopped = True
            for child in self._running:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGINT)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` while inside, as Ctrl-C does: a killed sweep stops
    its children and a killed run names its last checkpoint. The handler before is restored."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
