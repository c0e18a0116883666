"""Rebuild lab/normctl_lab/data/austen.txt.xz from Debian's r-cran-janeaustenr package, without R.

    apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb pkg
    python scripts/extract_austen.py pkg/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb

The R lazy-load database is a sequence of objects, each a 4-byte length and a zlib stream of
an R serialisation (XDR, version 3). Each novel is one character vector (STRSXP) of lines.
"""

from __future__ import annotations

import lzma
import struct
import sys
import zlib
from pathlib import Path

STRSXP, NA_LENGTH = 16, -1


def rdb_objects(raw: bytes):
    pos = 0
    while pos < len(raw):
        stream = zlib.decompressobj()
        data = stream.decompress(raw[pos + 4 :])
        pos = len(raw) - len(stream.unused_data)  # the next object starts where zlib stopped
        yield data


def character_vector(blob: bytes) -> list[str]:
    if blob[:2] != b"X\n":
        raise ValueError("not an XDR R serialisation")
    pos = 2 + 12  # format, version, R version, minimal version (three ints after the magic)
    (encoding_length,) = struct.unpack(">i", blob[pos : pos + 4])
    pos += 4 + encoding_length
    flags, count = struct.unpack(">Ii", blob[pos : pos + 8])
    pos += 8
    if flags & 0xFF != STRSXP:
        raise ValueError(f"expected a character vector, got SEXP type {flags & 0xFF}")
    lines = []
    for _ in range(count):
        _, length = struct.unpack(">Ii", blob[pos : pos + 8])
        pos += 8
        if length == NA_LENGTH:
            lines.append("")
            continue
        lines.append(blob[pos : pos + length].decode("utf-8"))
        pos += length
    return lines


def main(rdb: str, out: str = "lab/normctl_lab/data/austen.txt.xz") -> None:
    novels = ["\n".join(character_vector(obj)) for obj in rdb_objects(Path(rdb).read_bytes())]
    text = "\n\n".join(novels)
    Path(out).write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(novels)} novels, {len(text):,} characters -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
