"""Run under ``torchrun --nproc_per_node=2`` by tests/test_distributed.py: what each rank writes
and decides. Writes ``OUT.rank<r>.json`` per rank.

* the monitor and its file sinks, given one shared run directory on every rank: rank 0 writes;
* ``skip_nonfinite=True`` with replicated weights, gradients averaged over the ranks as DDP
  averages them (done by hand: DDP's reducer threads abort gloo's teardown now and then), and a
  non-finite gradient on rank 1 only after the average: every rank skips, the replicas stay equal;
* ``normctl.check`` called by rank 0 alone on an FSDP2-sharded model (as the lab and the framework
  callbacks print it) returns without waiting for rank 1.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import normctl
from normctl.monitor import CsvSink, JsonlSink, NormMonitor


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = normctl.AdamWN(normctl.param_groups(model), lr=1e-2, skip_nonfinite=True)
    run_dir = Path(out).parent / "shared_run"
    monitor = NormMonitor(model, optimizer, every=1, sinks=[JsonlSink(run_dir), CsvSink(run_dir)])
    g = torch.Generator().manual_seed(rank)
    for step in range(4):
        loss = model(torch.randn(8, 4, generator=g)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():  # DDP's average: the gradients equal on both ranks
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
        if step == 2 and rank == 1:
            model[0].weight.grad[0, 0] = float("nan")  # one rank's gradient turns non-finite afterwards
        optimizer.step()
        monitor.observe(loss=loss)
    monitor.close()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    report = {
        "replicas_max_diff": float((gathered[0] - gathered[1]).abs().max()),
        "skipped_steps": optimizer.param_groups[0]["skipped_steps"],
    }
    sharded = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    nn.init.zeros_(sharded[2].weight)  # a zero-norm controlled tensor: the check reads values
    fully_shard(sharded)
    checked = normctl.AdamWN(normctl.param_groups(sharded), lr=1e-2)
    if rank == 0:
        report["check_findings"] = len(normctl.check(checked, sharded))
    dist.monitored_barrier(timeout=timedelta(seconds=60))  # rank 1 waits here; a check that waits for it never ends
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
