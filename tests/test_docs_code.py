"""Every Python block of the README and the guides runs, as a reader would paste it: in a
namespace holding the few names the prose assumes (a small ``model`` whose ``model(x, y)`` is the
loss, a ``loader``, ``groups``, ``optimizer``, ``loss``; for the Hugging Face block a tiny GPT-2
``Trainer`` setup), in a fresh working directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import normctl

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


class TinyLM(nn.Module):
    """model(x, y) -> loss, with a LayerNorm (a normalised layer) and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        out = self.net(x)
        return out if y is None else nn.functional.mse_loss(out, y)


def names(block: str) -> dict:
    torch.manual_seed(0)
    model = TinyLM()
    namespace = {
        "torch": torch,
        "normctl": normctl,
        "nn": nn,
        "model": model,
        "loader": [(torch.randn(4, 8), torch.randn(4, 2)) for _ in range(3)],
        "groups": normctl.param_groups(model),
        "optimizer": torch.optim.AdamW(model.parameters()),
        "loss": torch.tensor(1.0),
    }
    if "Trainer(" in block:
        transformers = pytest.importorskip("transformers")
        pytest.importorskip("accelerate")
        config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
        namespace["model"] = transformers.GPT2LMHeadModel(config)
        namespace["ds"] = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (8, 16))]
        namespace["args"] = transformers.TrainingArguments(
            output_dir="hf_out", max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True
        )
        namespace["Trainer"] = transformers.Trainer
    if "import timm" in block:
        pytest.importorskip("timm")
    return namespace


BLOCKS = [
    pytest.param(block, id=f"{document}:{i}")
    for document in DOCUMENTS
    for i, block in enumerate(BLOCK.findall((ROOT / document).read_text()))
]


@pytest.mark.parametrize("block", BLOCKS)
def test_the_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "<doc>", "exec"), names(block))
