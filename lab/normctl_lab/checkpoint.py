"""Checkpoint files that cannot be half-written, silently corrupted or lost to a full disk.

A checkpoint is serialised in memory, written to ``NAME.tmp`` with a SHA-256 trailer, flushed to
disk and renamed over ``NAME`` (a kill leaves the old file or the new one, never half of one).
The checkpoint it replaces stays as ``NAME.prev``, so a damaged file always has a step to go
back to. Loading verifies the checksum before torch reads a byte of it, and every failure names
the file and the way to recover.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

TRAILER_TAG = b"\nnormctl-sha256:"
TRAILER_SIZE = len(TRAILER_TAG) + 64  # the tag and the hex digest of the payload


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or written; the message says what to do."""


def previous(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept."""
    return path.with_name(path.name + ".prev")


def save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` atomically with a checksum, keeping the replaced file as ``.prev``.

    A full disk (or any other write error) removes the temporary file, leaves ``path`` and its
    ``.prev`` as they were, and raises :class:`CheckpointError` naming the file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write(tmp, payload + TRAILER_TAG + hashlib.sha256(payload).hexdigest().encode())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        reason = "no space left on device" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise CheckpointError(f"{reason} writing {path}; the previous checkpoint is intact") from error
    if path.is_file():  # keep the checkpoint being replaced: a hard link, so `path` never goes missing
        kept = path.with_name(path.name + ".prev.tmp")
        kept.unlink(missing_ok=True)
        os.link(path, kept)
        os.replace(kept, previous(path))
    os.replace(tmp, path)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load(path: Path) -> Any:
    """The object saved at ``path``, after checking its checksum."""
    data = path.read_bytes()
    payload, trailer = data[:-TRAILER_SIZE], data[-TRAILER_SIZE:]
    if not trailer.startswith(TRAILER_TAG):
        raise CheckpointError(
            f"{path} is truncated or not a normctl checkpoint (no checksum at its end). {_recovery(path)}"
        )
    if hashlib.sha256(payload).hexdigest().encode() != trailer[len(TRAILER_TAG) :]:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents. {_recovery(path)}")
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)  # a foreign run directory runs no code
    except Exception as error:  # a checksum that matches a file torch cannot read: written by another program
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}). {_recovery(path)}") from error


def _recovery(path: Path) -> str:
    kept = previous(path)
    if kept.is_file():
        return f"The checkpoint before it is {kept}: move it to {path.name} to resume from there, or restart the run."
    return "No earlier checkpoint is kept: restart the run (normctl-lab train … --restart)."
