"""Hugging Face Trainer and PyTorch Lightning with normctl optimizers and the monitor callback."""

from unittest import mock

import pytest
import torch
from helpers import one_group

from normctl import AdamWN, NormControl, create_optimizer, schedules
from normctl.monitor import MemorySink, NormMonitor


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
        **({"save_strategy": "no"} | arguments),
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
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(accelerator="cpu", **(quiet | arguments))


def lightning_regression(pl, clip_log, method="adamwn", target=1.5):
    """A LayerNorm regression whose ``on_before_optimizer_step`` logs the gradients' global norm."""

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16, bias=False), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def on_before_optimizer_step(self, optimizer):  # after backward, before Lightning clips
            grads = [p.grad for p in self.parameters()]
            clip_log.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        def configure_optimizers(self):
            controlled = method == "adamwn" or method.endswith("+wn")
            return create_optimizer(self, method, lr=0.05, **({"target": target} if controlled else {}))

    return Regression()


def test_lightning_with_normctl_optimizer_and_monitor():
    pl = pytest.importorskip("lightning.pytorch")
    from normctl.integrations.lightning import NormMonitorCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    sink = MemorySink()
    trainer = quiet_trainer(pl, max_steps=6, callbacks=[NormMonitorCallback(every=2, sinks=[sink])])
    trainer.fit(lightning_regression(pl, [], "sgd+wn"), torch.utils.data.DataLoader(data, batch_size=8))
    assert [r["step"] for r in sink.records] == [2, 4, 6] and all("loss" in r for r in sink.records)
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
            return AdamWN(one_group(self.parameters()), lr=1e-2, target=1.5)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = quiet_trainer(pl, max_steps=4)
    module = Regression()
    with pytest.warns(UserWarning, match="start at norm 0"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert module.net[0].bias.detach().any() and all(torch.isfinite(p).all() for p in module.parameters())


class LogRecorder:
    """Stands for a tracker: keeps what the Trainer's on_log hands it."""

    def __init__(self):
        self.logs = []

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_hf_records_gradient_norms_before_clipping_the_loss_and_reach_the_trackers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations import hf

    # max_grad_norm far below the gradient's norm: every step is clipped
    model, data, args = tiny_gpt2(transformers, tmp_path, logging_steps=1000, max_grad_norm=0.01)
    sink, tracker = MemorySink(), LogRecorder()
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(create_optimizer(model, "adamc", lr=1e-3), None),
        callbacks=[tracker],
    )
    hf.attach(trainer, every=2, sinks=[sink])
    trainer.train()
    assert [r["step"] for r in sink.records] == [2, 4]  # the steps every=2 divides, as the Trainer counts
    logged = {h["step"]: h for h in trainer.state.log_history if "grad_norm" in h}
    for record in sink.records:
        step = record["step"]
        assert record["loss"] == pytest.approx(logged[step]["loss"])
        # the Trainer's own pre-clip norm, which the monitor's per-tensor norms now add up to
        assert record["global/grad_norm"] == pytest.approx(logged[step]["grad_norm"], rel=1e-4)
        assert record["global/grad_norm"] > 0.1 and record["global/clipped_grad_norm"] == pytest.approx(0.01, rel=1e-3)
        layers = [k for k in record if k.startswith("tensor/") and k.endswith("/grad_norm")]
        assert sum(record[k] ** 2 for k in layers) == pytest.approx(record["global/grad_norm"] ** 2, rel=1e-6)
    tracked = [logs for logs in tracker.logs if "normctl/global/weight_norm" in logs]
    assert len(tracked) == 2  # the tracker after the callback got the headline
    assert not any(k.startswith("normctl/tensor/") for k in tracked[0])  # and only the headline


# the paper's recipe: a target schedule in every param group, which the Trainer's
# torch.load(optimizer.pt, weights_only=True) must rebuild
@pytest.mark.parametrize("target", [1.0, schedules.target_from_adamw(1.5, 2)])
def test_hf_resumed_run_records_what_an_uninterrupted_one_does(tmp_path, target):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations import hf
    from normctl.monitor import JsonlSink, read_jsonl

    def run(out, logs, resume=None):
        model, data, args = tiny_gpt2(
            transformers, out, logging_steps=1000, save_strategy="steps", save_steps=2, data_seed=0
        )
        optimizer = create_optimizer(model, "adamwn", lr=1e-2, target=target)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
        hf.attach(trainer, every=1, sinks=[JsonlSink(logs, resume=resume is not None)])
        trainer.train(resume_from_checkpoint=resume)

    run(tmp_path / "whole", tmp_path / "whole_logs")
    run(tmp_path / "cut", tmp_path / "cut_logs")
    assert (tmp_path / "cut" / "checkpoint-2" / hf.CHECKPOINT_FILE).is_file()
    with pytest.warns(UserWarning, match="2 records after step 2 dropped"):
        run(tmp_path / "cut", tmp_path / "cut_logs", resume=str(tmp_path / "cut" / "checkpoint-2"))
    whole, resumed = (
        read_jsonl(tmp_path / "whole_logs" / "metrics.jsonl"),
        read_jsonl(tmp_path / "cut_logs" / "metrics.jsonl"),
    )
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed):
        ratios = [k for k in a if k.endswith("/norm_ratio") and a[k] is not None]  # None: initial norm 0
        assert ratios and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in ratios)


def recording_logger(pl):
    """A Lightning logger that keeps what it is given."""
    from lightning.pytorch.loggers import Logger

    class Recorder(Logger):
        name, version = "recorder", 0
        experiment = None

        def __init__(self):
            super().__init__()
            self.metrics, self.hyperparams = [], {}

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            self.hyperparams.update(params)

    return Recorder()


def test_lightning_records_the_steps_own_gradients_before_clipping_and_logs_to_trainer_loggers():
    pl = pytest.importorskip("lightning.pytorch")

    from normctl.integrations.lightning import NormMonitorCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    sink, pre_clip, logger = MemorySink(), [], recording_logger(pl)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=4,
        gradient_clip_val=0.01,
        callbacks=[NormMonitorCallback(every=1, sinks=[sink])],
    )
    # gradient-norm passes: per measured step the capture before clipping and the clipped norm
    # after the step, none over the previous step's gradients in the pre-step hook
    passes = []
    original = NormMonitor._grad_norms
    with mock.patch.object(NormMonitor, "_grad_norms", lambda self: passes.append(1) or original(self)):
        trainer.fit(lightning_regression(pl, pre_clip), torch.utils.data.DataLoader(data, batch_size=8))
    assert [r["step"] for r in sink.records] == [1, 2, 3, 4] and len(passes) == 2 * 4
    for record, norm in zip(sink.records, pre_clip):  # this step's gradients, before clipping
        assert record["global/grad_norm"] == pytest.approx(norm, rel=1e-5) and norm > 0.1
        assert record["global/clipped_grad_norm"] == pytest.approx(0.01, rel=1e-3)
    ours = [(step, m) for step, m in logger.metrics if "normctl/global/weight_norm" in m]
    assert [step for step, _ in ours] == [0, 1, 2, 3]  # where Lightning logs the same steps' own metrics
    assert not any(k.startswith("normctl/tensor/") for k in ours[0][1])


@pytest.mark.parametrize("target", [1.5, schedules.target_from_adamw(1.5, 2)])
def test_lightning_resumed_run_records_what_an_uninterrupted_one_does(tmp_path, target):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from normctl.integrations.lightning import NormMonitorCallback

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))

    def fit(max_steps, ckpt_path=None):
        torch.manual_seed(0)
        sink = MemorySink()
        trainer = quiet_trainer(
            pl,
            max_steps=max_steps,
            enable_checkpointing=True,
            default_root_dir=str(tmp_path),
            callbacks=[
                NormMonitorCallback(every=1, sinks=[sink]),
                ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1),
            ],
        )
        # two steps an epoch: the checkpoint at step 2 ends an epoch, where Lightning resumes exactly
        loader = torch.utils.data.DataLoader(data, batch_size=32)
        trainer.fit(lightning_regression(pl, [], target=target), loader, ckpt_path=ckpt_path)
        return sink.records

    whole = fit(4)
    checkpoint = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    resumed = fit(4, str(checkpoint))
    assert [r["step"] for r in resumed] == [3, 4]
    for a, b in zip(whole[2:], resumed):
        ratios = [k for k in a if k.endswith("/norm_ratio") and a[k] is not None]  # None: initial norm 0
        assert ratios and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in ratios)


def test_the_callbacks_give_an_automatic_target_the_runs_length():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pl = pytest.importorskip("lightning.pytorch")
    import tempfile

    from normctl import AutoTarget
    from normctl.integrations import hf
    from normctl.integrations.lightning import NormMonitorCallback

    with tempfile.TemporaryDirectory() as out:
        model, data, args = tiny_gpt2(transformers, out)
        optimizer = create_optimizer(model, "adamwn", lr=1e-3, target="auto")
        kept = create_optimizer(model, "adamwn", lr=1e-3, target=AutoTarget(total_steps=99))
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
        hf.attach(trainer, every=1)
        trainer.train()
        controlled = [g for g in optimizer.param_groups if g["control"]]
        assert controlled and all(g["target"].total_steps == 4 for g in controlled)  # the Trainer's max_steps
        multiplier = trainer.lr_scheduler.lr_lambdas[0]  # and the Trainer's lr schedule
        expected = [multiplier(t) for t in range(4)]
        assert all([g["target"].lr_schedule(t) for t in range(4)] == expected for g in controlled)
        hf.give_auto_targets_the_run_length(kept, 4)
        assert all(g["target"].total_steps == 99 for g in kept.param_groups if g["control"])  # the user's is kept

    module = lightning_regression(pl, [], target="auto")
    trainer = quiet_trainer(pl, max_steps=3, callbacks=[NormMonitorCallback(every=1)])
    trainer.fit(
        module,
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4),
    )
    groups = [g for g in trainer.optimizers[0].param_groups if g["control"]]
    assert groups and all(g["target"].total_steps == 3 for g in groups)
    assert all(g["target"].lr_schedule is None for g in groups)  # no scheduler: the current lr carries on


def test_hf_monitor_records_on_the_trainers_logging_steps(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations import hf

    model, data, args = tiny_gpt2(transformers, tmp_path, logging_steps=2)
    sink = MemorySink()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, optimizers=(create_optimizer(model, "adamc", lr=1e-3), None)
    )
    hf.attach(trainer, sinks=[sink])  # no every: the Trainer's logging_steps
    trainer.train()
    logged = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert [r["step"] for r in sink.records] == logged == [2, 4]
    # for Adam the prediction sits beside the ratio it predicts, the A-weighted one
    record = sink.records[-1]
    assert "group/normalized/adam_grad_weight_ratio" in record and "group/normalized/pred_ratio" in record


def test_lightning_records_the_steps_loss_on_its_logging_steps_and_keeps_its_state_after_fit(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from normctl.integrations.lightning import NormMonitorCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    module, losses = lightning_regression(pl, []), []
    step = module.training_step
    module.training_step = lambda *a, **k: (loss := step(*a, **k), losses.append(float(loss)))[0]
    sink = MemorySink()
    callback = NormMonitorCallback(sinks=[sink])
    trainer = quiet_trainer(
        pl,
        max_steps=4,
        accumulate_grad_batches=2,
        log_every_n_steps=2,
        callbacks=[callback],
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert [r["step"] for r in sink.records] == [2, 4]  # log_every_n_steps
    for record in sink.records:  # the mean of the step's two micro-batch losses
        s = record["step"]
        assert record["loss"] == pytest.approx((losses[2 * s - 2] + losses[2 * s - 1]) / 2, rel=1e-6)
    trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    saved = torch.load(tmp_path / "after_fit.ckpt", weights_only=True)["callbacks"]
    assert [state["monitor"]["steps"] for state in saved.values()] == [4]


def test_hf_names_the_tensors_a_warning_is_about(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations import hf

    model, data, args = tiny_gpt2(transformers, tmp_path)
    # the Trainer's own groups (decay / no decay) hold zero-initialised biases that AdamWN controls
    optimizer = AdamWN([{"params": [p for p in model.parameters()]}], lr=1e-3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
    hf.attach(trainer)
    with pytest.warns(UserWarning, match=r"start at norm 0 \(transformer\.h\.0\.") as caught:
        trainer.train()
    assert not any("group 0 tensor" in str(w.message) for w in caught)


def test_hf_prints_the_check_when_training_starts(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from normctl.integrations import hf

    model, data, args = tiny_gpt2(transformers, tmp_path, logging_steps=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # decays the LayerNorm gains too
    tracker = LogRecorder()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[tracker]
    )
    hf.attach(trainer)
    with mock.patch.object(hf, "check", wraps=hf.check) as checked:
        trainer.train()
    schedule = checked.call_args.kwargs["lr_schedule"]  # the Trainer's linear decay, read off its scheduler
    assert [schedule(t) for t in range(4)] == [trainer.lr_scheduler.lr_lambdas[0](t) for t in range(4)]
    printed = capsys.readouterr().out
    assert "[warning]" in printed and "fewer than 2 dimensions" in printed and "transformer.h.0.ln_1.weight" in printed
    verdict = printed[printed.index("normctl doctor — what weight decay did to this run") :]  # at the end
    assert "‖θ‖/‖θ0‖ ended at" in verdict
    # the trackers: the check's counts with the first log, the verdict's with the Trainer's last
    assert tracker.logs[0]["normctl/check/warnings"] >= 1
    assert sum("normctl/check/findings" in logs for logs in tracker.logs) == 1
    assert "train_runtime" in tracker.logs[-1] and tracker.logs[-1]["normctl/verdict/findings"] >= 1


def test_lightning_prints_the_check_when_training_starts(capsys):
    pl = pytest.importorskip("lightning.pytorch")
    from normctl.integrations.lightning import NormMonitorCallback

    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    logger = recording_logger(pl)
    trainer = pl.Trainer(
        accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=2, log_every_n_steps=1, callbacks=[NormMonitorCallback()],
    )  # fmt: skip
    trainer.fit(lightning_regression(pl, [], method="adamc"), torch.utils.data.DataLoader(data, batch_size=8))
    printed = capsys.readouterr().out
    assert "[info]" in printed and "decay never reaches its steady state in this run" in printed
    assert printed.index("normctl doctor — what weight decay did") > printed.index("decay never reaches")
    # the loggers: the check's and the verdict's text as hyperparameters, their counts as metrics
    assert "decay never reaches its steady state" in logger.hyperparams["normctl/check"]
    assert "‖θ‖/‖θ0‖ ended at" in logger.hyperparams["normctl/verdict"]
    counted = {k: v for _, m in logger.metrics for k, v in m.items() if k.endswith("/findings")}
    assert counted["normctl/check/findings"] >= 1 and counted["normctl/verdict/findings"] >= 1
