"""Hugging Face Trainer and PyTorch Lightning with normctl optimizers and the monitor callback."""

import pytest
import torch

from normctl import AdamWN, NormControl, create_optimizer
from normctl.monitor import MemorySink


def tiny_gpt2(transformers, tmp_path, **arguments):
    """A freshly initialised 1-layer GPT-2 (nothing downloaded), 16 random sequences and 4 CPU steps."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (16, 16))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        **arguments,
    )
    return transformers.GPT2LMHeadModel(config), data, args


def test_hf_trainer_with_normctl_optimizer_and_monitor(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations.hf import NormMonitorCallback

    model, data, args = tiny_gpt2(transformers, tmp_path, logging_steps=1)
    sink = MemorySink()
    optimizer = create_optimizer(model, "adamwn", lr=1e-3, target=1.2)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(optimizer, None),
        callbacks=[NormMonitorCallback(every=1, sinks=[sink])],
    )
    trainer.train()
    assert [r["step"] for r in sink.records] == [1, 2, 3, 4]
    assert any("init_norm" in s for s in optimizer.state.values())


def test_hf_trainer_builds_adamwn_from_model_parameters_on_a_fresh_gpt2(tmp_path):
    """The documented route, the Trainer building the optimizer from a class and kwargs over
    ``model.parameters()``, on a freshly initialised GPT-2 (zero biases, LayerNorm shifts at 0)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, data, args = tiny_gpt2(transformers, tmp_path)
    zero = [name for name, p in model.named_parameters() if not p.detach().any()]
    assert zero  # the case under test: biases and norm shifts start at 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=(AdamWN, {"lr": 1e-3, "target": 1.5})
    )
    with pytest.warns(UserWarning, match=r"start at norm 0.*left uncontrolled"):
        trainer.train()
    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, AdamWN)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert set(zero) & moved  # the zero-initialised tensors train (Adam's step), rather than stay at 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def quiet_trainer(pl, **arguments):
    """A CPU Lightning Trainer that writes and prints nothing of its own."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **arguments,
    )


def test_lightning_with_normctl_optimizer_and_monitor():
    pl = pytest.importorskip("lightning.pytorch")
    from normctl.integrations.lightning import NormMonitorCallback

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16, bias=False), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return create_optimizer(self, "sgd+wn", lr=0.05, target=1.5)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    sink = MemorySink()
    trainer = quiet_trainer(pl, max_steps=6, callbacks=[NormMonitorCallback(every=2, sinks=[sink])])
    module = Regression()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert [r["step"] for r in sink.records] == [1, 3, 5] and all("loss" in r for r in sink.records)
    assert isinstance(trainer.optimizers[0], NormControl)


def test_lightning_with_adamwn_over_self_parameters():
    pl = pytest.importorskip("lightning.pytorch")

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
            torch.nn.init.zeros_(self.net[0].bias)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return AdamWN(self.parameters(), lr=1e-2, target=1.5)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = quiet_trainer(pl, max_steps=4)
    module = Regression()
    with pytest.warns(UserWarning, match="start at norm 0"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert module.net[0].bias.detach().any() and all(torch.isfinite(p).all() for p in module.parameters())
