"""DDP and FSDP2 against a single process, and distributed checkpoints (2 CPU processes, gloo).

``distributed_parity.py`` does the training under ``torchrun``; these tests read its report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed_parity import CASES as PARITY_CASES
from distributed_parity import CHECKPOINTED, REFUSED_UNDER_FSDP
from normctl_lab.models import GPT, GPTConfig
from torch import nn

from normctl import AdamC, AdamWN, MuonAdamW, NormMonitor, param_groups

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo"
)
SCRIPT = Path(__file__).with_name("distributed_parity.py")
TOLERANCE = 1e-5  # float64 runs agree to ~1e-12; the bound leaves room for other reduction orders


def torchrun(nproc: int, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "report.json"
    torchrun(2, str(out))
    torchrun(1, str(out), "resume-single")  # the 2-rank checkpoint loaded by one process
    result = json.loads(out.read_text())
    result["single"] = json.loads(out.with_suffix(".single.json").read_text())
    return result


CASES = list(PARITY_CASES)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one(report, mode, case):
    assert report["world_size"] == 2
    if mode == "fsdp" and case in REFUSED_UNDER_FSDP:  # refused before its first step, saying why
        assert REFUSED_UNDER_FSDP[case] in report["cases"][f"{mode}/{case}"]["refused"]
        return
    assert report["cases"][f"{mode}/{case}"]["max_rel_diff"] < TOLERANCE


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", [c for c in CASES if "auto" in c])
def test_an_automatic_target_is_the_same_on_every_rank_and_as_on_one(report, mode, case):
    result = report["cases"][f"{mode}/{case}"]
    first, second = result["auto_targets"]
    reference = result["reference_auto_targets"]
    assert reference and all(math.isfinite(t) for t in reference)  # every target was chosen within the run
    assert first == second  # bit for bit on both ranks
    assert first == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_monitor_reports_full_tensor_values(report, mode):
    """Under FSDP2 each rank holds slices; the monitor's norms, ℓ∞ and min/mean/max must be
    those of the whole tensors, as one process measures them."""
    for case in CASES:
        if mode == "fsdp" and case in REFUSED_UNDER_FSDP:
            continue
        result = report["cases"][f"{mode}/{case}"]
        assert len(result["monitor"]) == len(result["reference_monitor"]) == 4
        for got, want in zip(result["monitor"], result["reference_monitor"]):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float):
                    assert got[key] == pytest.approx(value, rel=TOLERANCE, abs=1e-12), (case, key)


@pytest.mark.parametrize("case", CHECKPOINTED)
def test_sharded_checkpoint_resumes_identically(report, case):
    result = report["dcp"][case]
    assert result["meta_step"] == 10
    if case != "adamw+c":  # normctl's own group entries came back
        assert result["schedule_step"] == 10
    assert result["resume_max_rel_diff"] < 1e-12


@pytest.mark.parametrize("case", CHECKPOINTED)
def test_sharded_checkpoint_loads_into_another_world_size(report, case):
    assert report["single"]["world_size"] == 1
    assert report["single"][case] < TOLERANCE


def test_checkpoint_state_initialisation_leaves_the_model_alone():
    """torch.distributed.checkpoint creates optimizer state with a zero-lr, zero-grad step;
    for AdamWN that must not apply Eq. 3 or advance the schedule."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=29, block_size=8, n_layer=1, n_head=2, n_embd=12))
    optimizer = AdamWN(param_groups(model), lr=1e-2, target=0.5, rate=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    _, optim_state = get_state_dict(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimizer.param_groups[0]["schedule_step"] == 0
    assert all(float(s["step"]) == 0 for s in optimizer.state.values())
    assert all(p.grad is None for p in model.parameters())
    assert "init_norm" in optim_state["state"]["transformer.h.0.attn.c_attn.weight"]


def test_flat_parameters_are_refused_where_norms_are_computed():
    flat = nn.Parameter(torch.randn(10))
    flat._fsdp_flattened = True  # what FSDP1 marks its flattened parameters with
    with pytest.raises(TypeError, match="FSDP2"):
        AdamWN([flat])
    with pytest.raises(TypeError, match="FSDP2"):
        NormMonitor(nn.Linear(2, 2), torch.optim.SGD([flat], lr=0.1))
    zero3 = nn.Parameter(torch.randn(10))
    zero3.ds_id = 0  # DeepSpeed ZeRO-3's partitioned parameter
    with pytest.raises(TypeError, match="ZeRO-3"):
        AdamWN([zero3])
    with pytest.raises(TypeError, match="orthogonalises whole matrices.*DDP"):
        MuonAdamW([flat])  # split by shape, the flat 1-d slice would have become Adam's vector, silently
        AdamWN([{"params": [flat], "control": False}])  # no norms, no refusal
    AdamC([flat], normalized=True)  # elementwise: correct on any slice


def test_under_torchrun_one_rank_writes_and_every_rank_takes_the_same_skip_decision(tmp_path):
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("distributed_ranks.py")
    done = subprocess.run([*command, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from normctl.monitor import read_jsonl
    from normctl.report import load_run

    records = read_jsonl(tmp_path / "shared_run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 alone: each step once
    assert len((tmp_path / "shared_run" / "metrics.csv").read_text().splitlines()) == 5
    load_run(tmp_path / "shared_run")  # the report reads it
    for rank in (0, 1):
        report = json.loads((tmp_path / f"ranks.rank{rank}.json").read_text())
        assert report["skipped_steps"] == 1 and report["replicas_max_diff"] == 0.0
    assert json.loads((tmp_path / "ranks.rank0.json").read_text())["check_findings"] >= 0  # it returned
