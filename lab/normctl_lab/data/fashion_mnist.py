"""Fashion-MNIST (Xiao et al. 2017, MIT): real 28×28 grayscale images of 10 clothing classes.

The full set (60k train, 10k test) comes from Debian's ``dataset-fashion-mnist`` package
(``make data`` installs it under ``/usr/share/datasets/fashion-mnist``); a sample of the first
2 000 training and 500 test images ships inside the package for tests and quick runs.
"""

from __future__ import annotations

import gzip
import os
import struct
from importlib import resources
from pathlib import Path

import torch

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(data: bytes) -> torch.Tensor:
    """An IDX file (unsigned bytes): 2 zero bytes, type 0x08, the number of dimensions, the
    big-endian dimensions, then the values."""
    if data[:3] != b"\x00\x00\x08":
        raise ValueError("not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8)
    return values.reshape(dims)


def data_dir(full: bool) -> Path:
    """``$NORMCTL_FASHION_MNIST``, else the Debian package's folder when ``full`` and present,
    else the embedded sample."""
    env = os.environ.get("NORMCTL_FASHION_MNIST")
    if env:
        return Path(env)
    if full:
        if not (SYSTEM_DIR / FILES["train"][0]).is_file():
            raise FileNotFoundError(
                f"full Fashion-MNIST not found in {SYSTEM_DIR}: run `make data` "
                "(installs Debian's dataset-fashion-mnist) or set NORMCTL_FASHION_MNIST"
            )
        return SYSTEM_DIR
    return Path(str(resources.files(__package__).joinpath("fashion-mnist-sample")))


def load_fashion_mnist(split: str = "train", *, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1], labels (N,) int64) of ``split``."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = data_dir(full)
    images, labels = (read_idx(gzip.decompress((root / name).read_bytes())) for name in FILES[split])
    return images.unsqueeze(1).float() / 255, labels.long()
