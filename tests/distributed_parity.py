"""Run under ``torchrun --nproc_per_node=2``: DDP and FSDP2 against a single process.

Every rank trains the same float64 GPT on the same global batches (each rank its slice);
rank 0 also trains it alone on the whole batches, and writes the largest relative
parameter difference of each case, the monitor's records and the checkpoint checks to the
JSON file named by the first argument. ``tests/test_distributed.py`` launches it and checks
the numbers. A second mode (``resume-single``) loads the sharded checkpoint into one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from normctl_lab import parallel
from normctl_lab.models import GPT, GPTConfig
from torch import nn

from normctl import (
    SGDC,
    AdamC,
    AdamWN,
    AutoTarget,
    CorrectedDecay,
    MuonC,
    NormControl,
    NormMonitor,
    param_groups,
    schedules,
)
from normctl.monitor import MemorySink

STEPS = 20
BATCH = 4
CFG = GPTConfig(vocab_size=29, block_size=8, n_layer=2, n_head=2, n_embd=12)  # 29 rows: uneven shards


def cosine(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedules.cosine(1.0, 0.1, STEPS))


CASES = {
    "adamwn_tensor": lambda groups: AdamWN(groups, lr=1e-2, target=0.7, rate=0.05),
    "adamwn_global": lambda groups: AdamWN(groups, lr=1e-2, target=0.7, rate=0.05, scope="global"),
    "adamwn_group_post": lambda groups: AdamWN(
        groups, lr=1e-2, target=schedules.linear_ramp(1.0, 0.6, 5), rate=0.2, scope="group", control_at="post_step"
    ),
    "adamc": lambda groups: AdamC(groups, lr=1e-2, weight_decay=0.5),
    "sgdc": lambda groups: SGDC(groups, lr=0.1, momentum=0.9, weight_decay=0.05),
    "sgd+wn": lambda groups: NormControl(torch.optim.SGD(groups, lr=0.1, momentum=0.9), target=0.8, rate=0.05),
    "adamw+c": lambda groups: CorrectedDecay(torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.5)),
    # target="auto": measured over steps 1-12 (the checkpoint at step 10 falls inside), then held
    "adamwn_auto": lambda groups: AdamWN(groups, lr=1e-2, target=AutoTarget(steps=12), rate=0.2),
    # one ratio for every tensor of a group, with the updates' alignment: sums over sharded tensors
    "adamwn_auto_shared": lambda groups: AdamWN(
        groups, lr=1e-2, target=AutoTarget(steps=12, alignment=True, shared_ratio=True), rate=0.2
    ),
    "adamwn_auto_global": lambda groups: AdamWN(
        groups, lr=1e-2, target=AutoTarget(rule="inflection", interval=3, ema=0.5), rate=0.2, scope="global"
    ),
}
# Muon orthogonalises each matrix whole: replicated under DDP, refused when FSDP2 shards it
CASES["muonc"] = lambda groups: MuonC(
    [{**g, "muon": g["name"] == "normalized"} for g in groups], lr=1e-2, weight_decay=0.5
)
REFUSED_UNDER_FSDP = {"muonc": "orthogonalises each matrix whole"}
# saved at step 10 through DCP, resumed on 2 ranks and on 1: normctl's optimizers and wrappers
CHECKPOINTED = ["adamwn_group_post", "sgd+wn", "adamw+c", "adamwn_auto"]


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        x = torch.randint(CFG.vocab_size, (BATCH, CFG.block_size), generator=g)
        out.append((x, torch.roll(x, -1, dims=1)))
    return out


def fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return GPT(CFG).double()


def train(model: nn.Module, optimizer, scheduler, data, world: parallel.World, monitor=None) -> None:
    for x, y in data:
        x, y = parallel.local_slice((x, y), world)
        optimizer.zero_grad(set_to_none=True)
        loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.observe(loss=parallel.mean_over_ranks(loss, world))
        scheduler.step()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in parallel.unwrap(model).named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)) for k in a)


def auto_targets(optimizer) -> list[float]:
    """The targets ``target="auto"`` chose: per tensor, then per group/global scope."""
    tensor_scope = [
        p for g in optimizer.param_groups if g.get("control") and g.get("scope") == "tensor" for p in g["params"]
    ]
    per_tensor = [
        float(optimizer.state[p]["auto_target"]) for p in tensor_scope if "auto_target" in optimizer.state.get(p, {})
    ]
    return per_tensor + [g["auto_target"] for g in optimizer.param_groups if g.get("auto_target") is not None]


def fresh_run(case: str, mode: str, world: parallel.World):
    """The fresh model (replicated or sharded over ``world``), the case's optimizer over it and
    its LR schedule."""
    model = parallel.wrap(fresh_model(), mode, world)
    optimizer = CASES[case](param_groups(parallel.unwrap(model)))
    return model, optimizer, cosine(optimizer)


def run(mode: str, case: str, world: parallel.World, data, *, monitored: bool = False):
    model, optimizer, scheduler = fresh_run(case, mode, world)
    sink = MemorySink()
    monitor = NormMonitor(parallel.unwrap(model), optimizer, every=5, sinks=[sink]) if monitored else None
    train(model, optimizer, scheduler, data, world, monitor)
    return model, optimizer, sink.records


def main(out_path: str) -> None:
    world = parallel.init_world("cpu")
    data = batches(STEPS)
    single = parallel.World()
    report: dict = {"world_size": world.size, "cases": {}}
    for case in CASES:
        reference, ref_optimizer, ref_records = run("ddp", case, single, data, monitored=True)
        ref = full_params(reference)
        for mode in parallel.PARALLEL_MODES:
            if mode == "fsdp" and case in REFUSED_UNDER_FSDP:
                try:
                    run(mode, case, world, data)
                except ValueError as error:
                    report["cases"][f"{mode}/{case}"] = {"refused": str(error)}
                    continue
            model, optimizer, records = run(mode, case, world, data, monitored=True)
            every_rank: list = [None] * world.size
            dist.all_gather_object(every_rank, auto_targets(optimizer))
            report["cases"][f"{mode}/{case}"] = {
                "max_rel_diff": max_rel_diff(full_params(model), ref),
                "monitor": records,
                "reference_monitor": ref_records,
                "auto_targets": every_rank,
                "reference_auto_targets": auto_targets(ref_optimizer),
            }

    # Distributed checkpoint: save at step 10, restore into fresh sharded objects, continue.
    report["dcp"] = {}
    for case in CHECKPOINTED:
        checkpoint = Path(out_path).with_suffix(f".{case}.dcp")
        model, optimizer, scheduler = fresh_run(case, "fsdp", world)
        train(model, optimizer, scheduler, data[:10], world)
        parallel.save_sharded(checkpoint, model, optimizer, {"step": 10, "scheduler": scheduler.state_dict()})
        train(model, optimizer, scheduler, data[10:], world)
        uninterrupted = full_params(model)
        model, optimizer, scheduler = fresh_run(case, "fsdp", world)
        meta = parallel.load_sharded(checkpoint, model, optimizer)
        scheduler.load_state_dict(meta["scheduler"])
        result = {"meta_step": meta["step"], "schedule_step": optimizer.param_groups[0].get("schedule_step")}
        train(model, optimizer, scheduler, data[10:], world)
        report["dcp"][case] = {**result, "resume_max_rel_diff": max_rel_diff(full_params(model), uninterrupted)}

    if world.is_main:
        Path(out_path).write_text(json.dumps(report))
    dist.barrier()  # no rank tears the group down while another still works in it
    dist.destroy_process_group()


def resume_single(out_path: str) -> None:
    """One process loads the 2-rank checkpoint (DCP reshards it) and finishes the run."""
    world = parallel.init_world("cpu")
    data = batches(STEPS)
    result: dict = {"world_size": world.size}
    for case in CHECKPOINTED:
        reference, _, _ = run("ddp", case, parallel.World(), data)
        model, optimizer, scheduler = fresh_run(case, "ddp", parallel.World())  # one process: plain
        meta = parallel.load_sharded(Path(out_path).with_suffix(f".{case}.dcp"), model, optimizer)
        scheduler.load_state_dict(meta["scheduler"])
        train(model, optimizer, scheduler, data[10:], parallel.World())
        result[case] = max_rel_diff(full_params(model), full_params(reference))
    Path(out_path).with_suffix(".single.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    (resume_single if sys.argv[2:] == ["resume-single"] else main)(sys.argv[1])
