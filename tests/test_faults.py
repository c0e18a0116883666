"""Fault injection against the lab's runs: two writers, divergence, damaged checkpoints, a full
disk, a deleted checkpoint, Ctrl-C. Nothing a run wrote may be lost or pass silently."""

import errno
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import untimed
from normctl_lab import checkpoint as checkpoints
from normctl_lab import parallel
from normctl_lab.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, main
from normctl_lab.config import RunConfig, with_overrides
from normctl_lab.lock import RunDirectoryBusy, RunLock
from normctl_lab.train import CHECKPOINT, train

from normctl.report import build_report, load_run

TINY = ["n_layer=1", "n_embd=32", "block_size=16", "batch_size=4", "monitor_every=2", "checkpoint_every=5"]


def tiny(*changes: str) -> RunConfig:
    return with_overrides(RunConfig(), [*TINY, "steps=10", *changes])


def wait_until(condition, process, what: str, seconds: float = 600) -> None:
    """Poll ``condition`` while ``process`` runs: a loaded machine can take minutes to import torch
    in a child, and a signal sent before the child reached ``what`` tests nothing."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the child stopped before {what}"
        assert time.monotonic() < deadline, f"the child did not reach {what} in {seconds} s"
        time.sleep(0.05)


def strict_load(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- two writers ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirectoryBusy, match=r"is being written by pid \d+"):
            train(tiny(), tmp_path, verbose=False)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()
    train(tiny(), tmp_path, verbose=False)  # released: the directory is free again


def test_a_killed_holder_leaves_the_directory_free(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from normctl_lab.lock import RunLock; RunLock({str(tmp_path)!r}).__enter__(); "
            "import time; time.sleep(60)",
        ]
    )
    try:
        lock = tmp_path / ".lock"
        wait_until(lambda: lock.is_file() and lock.read_text(), holder, "holding the lock")
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):
        pass


def test_the_cli_reports_a_busy_directory_in_one_line(tmp_path, capsys):
    with RunLock(tmp_path):
        assert main(["train", "--out", str(tmp_path), *[f"--set={a}" for a in TINY], "--set=steps=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("normctl-lab train: ") and "is being written by pid" in err and "Traceback" not in err


# -- diverging runs ------------------------------------------------------------------------------


def test_a_diverging_run_stops_exits_non_zero_and_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "diverged"
    code = main(["train", "--out", str(out), *[f"--set={a}" for a in TINY], "--set=steps=40", "--set=lr=1e3"])
    assert code == EXIT_DIVERGED
    final = strict_load(out / "final.json")
    assert final["status"] == "diverged" and 1 <= final["diverged_at_step"] <= 40
    printed = capsys.readouterr().out
    assert "not finite" in printed
    strict_load_lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] < final["diverged_at_step"] for r in strict_load_lines)
    run = load_run(out)
    assert run.status == f"diverged at step {final['diverged_at_step']}"
    page = build_report([out], tmp_path / "report.html").read_text()
    assert "diverged at step" in page


def test_skip_mode_skips_non_finite_steps_and_finishes(tmp_path, monkeypatch):
    from normctl_lab import train as train_module

    real = train_module.build_task

    def poisoned(cfg):  # the loss of every 3rd batch is NaN
        task = real(cfg)
        calls = {"n": 0}
        loss = task.loss

        def nan_every_third(model, batch):
            calls["n"] += 1
            value = loss(model, batch)
            return value * float("nan") if calls["n"] % 3 == 0 else value

        task.loss = nan_every_third
        return task

    monkeypatch.setattr(train_module, "build_task", poisoned)
    final = train(tiny("on_nonfinite=skip"), tmp_path, verbose=False)
    assert final["status"] == "finished" and final["skipped_steps"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for k, v in final.items() if k.endswith("loss"))


def test_on_nonfinite_is_validated():
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        tiny("on_nonfinite=ignore")


# -- checkpoint integrity ------------------------------------------------------------------------


@pytest.fixture
def checkpointed(tmp_path):
    """A run stopped at step 10 with checkpoints at 5 and 10 (``.prev`` is step 5)."""
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, verbose=False)
    (run_dir / "final.json").unlink()
    return run_dir


def test_every_checkpoint_keeps_the_one_it_replaced(checkpointed):
    assert checkpoints.load(checkpointed / CHECKPOINT)["step"] == 10
    assert checkpoints.load(checkpointed / (CHECKPOINT + ".prev"))["step"] == 5
    assert not list(checkpointed.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "random"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_way_back(checkpointed, damage):
    path = checkpointed / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "flip":
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    path.write_bytes(bytes(data))
    metrics_before = (checkpointed / "metrics.jsonl").read_text()
    with pytest.raises(checkpoints.CheckpointError) as error:
        train(tiny(), checkpointed, verbose=False)
    message = str(error.value)
    assert str(path) in message and str(checkpointed / (CHECKPOINT + ".prev")) in message
    assert (checkpointed / "metrics.jsonl").read_text() == metrics_before  # nothing was touched


def test_the_cli_reports_a_damaged_checkpoint_without_a_traceback(checkpointed, capsys):
    (checkpointed / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert main(["train", "--out", str(checkpointed), *[f"--set={a}" for a in TINY], "--set=steps=10"]) == 1
    err = capsys.readouterr().err
    assert "is truncated or not a normctl checkpoint" in err and "Traceback" not in err


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary(checkpointed, monkeypatch):
    before = (checkpointed / CHECKPOINT).read_bytes()

    def no_space(path, data):
        path.write_bytes(data[: len(data) // 2])  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write", no_space)
    with pytest.raises(
        checkpoints.CheckpointError, match=f"no space left on device writing {checkpointed / CHECKPOINT}"
    ):
        checkpoints.save({"step": 11}, checkpointed / CHECKPOINT)
    assert (checkpointed / CHECKPOINT).read_bytes() == before
    assert not list(checkpointed.glob("*.tmp"))


def test_a_full_disk_on_a_real_small_filesystem(tmp_path):
    """Where this process may mount a 2 MB tmpfs (root on Linux), the real ENOSPC path."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a small tmpfs here; the simulated ENOSPC test covers the path")
    try:
        path = mount / CHECKPOINT
        checkpoints.save({"w": torch.zeros(1000)}, path)
        before = path.read_bytes()
        with pytest.raises(checkpoints.CheckpointError, match="no space left on device"):
            checkpoints.save({"w": torch.zeros(1_000_000)}, path)  # 4 MB
        assert path.read_bytes() == before and not list(mount.glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- a deleted checkpoint ------------------------------------------------------------------------


def test_metrics_without_a_checkpoint_are_not_silently_deleted(checkpointed):
    (checkpointed / CHECKPOINT).unlink()
    (checkpointed / (CHECKPOINT + ".prev")).unlink()
    metrics = (checkpointed / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="pass --restart"):
        train(tiny(), checkpointed, verbose=False)
    assert (checkpointed / "metrics.jsonl").read_text() == metrics
    final = train(tiny(), checkpointed, verbose=False, restart=True)
    assert final["status"] == "finished"
    steps = [r["step"] for r in load_run(checkpointed).records]
    assert steps == sorted(set(steps)) and steps[0] == 1


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_prints_one_line_and_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "normctl_lab.cli", "train", "--out", str(run_dir)]
    command += [f"--set={a}" for a in TINY] + ["--set=steps=100000"]
    # a test runner started in the background (nohup, `&`) hands its children SIGINT ignored, and
    # Python then keeps it ignored: the child starts with the default disposition, as from a terminal
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until((run_dir / CHECKPOINT).is_file, process, "its first checkpoint")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()  # a child the signal did not stop must not train on after the test
    assert process.returncode == EXIT_INTERRUPTED
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "interrupted at step" in lines[0] and "run the same command to resume" in lines[0]
    saved = checkpoints.load(run_dir / CHECKPOINT)["step"]
    assert f"the last checkpoint is at step {saved}" in lines[0]


# -- the process group ---------------------------------------------------------------------------


def test_the_process_group_is_destroyed_when_a_run_ends(monkeypatch):
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    parallel.close_world(parallel.World(rank=0, size=2))
    assert not dist.is_initialized()


def test_train_leaves_the_world_even_when_it_fails(tmp_path, monkeypatch):
    from normctl_lab import train as train_module

    closed = []
    monkeypatch.setattr(train_module.parallel, "close_world", lambda world: closed.append(world))
    with RunLock(tmp_path), pytest.raises(RunDirectoryBusy):
        train(tiny(), tmp_path, verbose=False)
    assert len(closed) == 1


# -- resuming through the one-pass kernel ----------------------------------------------------------


def test_an_interrupted_adamwn_run_resumes_with_identical_metrics(tmp_path, monkeypatch):
    """Ctrl-C at step 27, resume from the checkpoint at step 20: the metrics equal an
    uninterrupted run's byte for byte, on the default float32 path (the one-pass CPU kernel)."""
    from normctl_lab import train as train_module
    from normctl_lab.train import RunInterrupted

    cfg = with_overrides(RunConfig(), [*TINY, "steps=40", "checkpoint_every=10", "method=adamwn", "target_ratio=1.3"])
    train(cfg, tmp_path / "whole", verbose=False)

    real = train_module.build_task

    def interrupted_at_27(cfg):
        task = real(cfg)
        loss, calls = task.loss, {"n": 0}

        def loss_or_interrupt(model, batch):
            calls["n"] += 1
            if calls["n"] == 27:
                raise KeyboardInterrupt
            return loss(model, batch)

        task.loss = loss_or_interrupt
        return task

    monkeypatch.setattr(train_module, "build_task", interrupted_at_27)
    with pytest.raises(RunInterrupted, match="interrupted at step 26 of 40; the last checkpoint is at step 20"):
        train(cfg, tmp_path / "resumed", verbose=False)
    monkeypatch.setattr(train_module, "build_task", real)
    train(cfg, tmp_path / "resumed", verbose=False)
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    final = {run: json.loads((tmp_path / run / "final.json").read_text()) for run in ("resumed", "whole")}
    assert untimed(final["resumed"]) == untimed(final["whole"])  # everything but the time it took
