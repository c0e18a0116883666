"""optimizer.step() time on GPT-2-small and ResNet-50 parameter shapes, against torch in one run.

    python benchmarks/step_speed.py [--family gpt2|resnet50|gpt4x384|both] [--repeats 7] [--rounds 3]
                                    [--dtype float32|bfloat16] [--device cpu|cuda]

Parameters get fixed random gradients. Each optimizer's steps alternate with those of its
baseline — torch's fused AdamW for the Adam family, torch's fused SGD (foreach where there is
no fused kernel, or where torch's fused SGD is defective: bfloat16/float16 CPU weights before
torch 2.14, pytorch/pytorch#191763) for SGD, normctl's Lion for Lion, torch's Muon over the hidden
matrices plus its fused AdamW over the rest for the Muon family (timed on ``gpt4x384``, a 4-block
d = 384 GPT: Newton–Schulz on GPT-2 small's matrices takes seconds per step on a laptop's CPU;
``both`` is gpt2 and resnet50) — each on its own copy of the weights, so
that a slow stretch of a shared machine falls on both alike; the baseline paired with a second
instance of itself shows the method's own noise; ``--only`` times some of them alone.
``--rounds`` passes over the whole list, each in its own shuffled order. Prints the median and
quartiles of each optimizer's steps, the ratio of its median to the median of the baseline
steps paired with it (pooled, and the range over rounds), the bytes of optimizer state (and on
CUDA the peak memory a step allocates beyond the parameters, gradients and state), and writes
results/bench/step_speed_<family>[_<dtype>][_cuda][_<tag>].json (``--tag``: another torch, say).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import warnings

import torch
from common import machine, summary, write_json

from normctl import SGDC, AdamC, AdamWN, CorrectedDecay, Lion, MuonAdamW, MuonC, NormControl
from normctl.optim import _one_pass_cpu
from normctl.optim.sgdc import fused_sgd_defect


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """nanoGPT's GPT-2 small (124M, tied head): embeddings, 12 blocks, final LayerNorm."""
    d, shapes = 768, [(50304, 768), (1024, 768)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def gpt4x384_shapes() -> list[tuple[int, ...]]:
    """A nanoGPT of 4 blocks at d = 384 (GPT-2's vocabulary, tied head): the Muon family's model."""
    d, shapes = 384, [(50304, 384), (1024, 384)]
    for _ in range(4):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """torchvision ResNet-50 (25.6M): conv weights, BatchNorm gains/biases, the classifier."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [
                (width, in_ch, 1, 1),
                (width,),
                (width,),
                (width, width, 3, 3),
                (width,),
                (width,),
                (4 * width, width, 1, 1),
                (4 * width,),
                (4 * width,),
            ]
            if b == 0:
                shapes += [(4 * width, in_ch, 1, 1), (4 * width,), (4 * width,)]
            in_ch = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def groups_for(params: list[torch.Tensor]) -> list[dict]:
    matrices = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]
    return [
        {"params": matrices, "weight_decay": 0.1, "normalized": True, "control": True},
        {"params": vectors, "weight_decay": 0.0, "normalized": False, "control": False},
    ]


def muon_groups_for(params: list[torch.Tensor]) -> list[dict]:
    """Muon's split: the block matrices by Muon (normalised); the two embeddings (the first two
    tensors), any tensor of more than 2 dimensions and the vectors by AdamW."""
    hidden = [p for p in params[2:] if p.ndim == 2]
    adam = [p for p in params[:2] if p.ndim >= 2] + [p for p in params[2:] if p.ndim > 2]
    vectors = [p for p in params if p.ndim < 2]
    groups = [
        {"params": hidden, "weight_decay": 0.1, "normalized": True, "control": True, "muon": True},
        {"params": adam, "weight_decay": 0.1, "normalized": False, "control": True, "muon": False},
        {"params": vectors, "weight_decay": 0.0, "normalized": False, "control": False, "muon": False},
    ]
    return [g for g in groups if g["params"]]


class TorchMuonPlusAdamW:
    """torch's Muon over the groups with ``muon=True`` and its fused AdamW over the rest: the two
    optimizers a Muon recipe steps one after the other."""

    def __init__(self, groups: list[dict]) -> None:
        keep = ("params", "weight_decay")
        muon = [{k: g[k] for k in keep} for g in groups if g["muon"]]
        self.muon = torch.optim.Muon(muon, lr=1e-3, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW([{k: g[k] for k in keep} for g in groups if not g["muon"]], lr=1e-3, fused=True)
        self.state = {**self.muon.state, **self.adamw.state}

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()
        self.state = {**self.muon.state, **self.adamw.state}


ADAM_FAMILY = {
    "torch AdamW for-loop": lambda g: torch.optim.AdamW(g, lr=1e-3, foreach=False),
    "torch AdamW foreach": lambda g: torch.optim.AdamW(g, lr=1e-3, foreach=True),
    "torch AdamW fused": lambda g: torch.optim.AdamW(g, lr=1e-3, fused=True),
    "AdamWN tensor": lambda g: AdamWN(g, lr=1e-3, target=1.5, scope="tensor"),
    "AdamWN group": lambda g: AdamWN(g, lr=1e-3, target=1.5, scope="group"),
    "AdamWN global": lambda g: AdamWN(g, lr=1e-3, target=1.5, scope="global"),
    "AdamWN tensor (foreach)": lambda g: AdamWN(g, lr=1e-3, target=1.5, foreach=True),
    "AdamC": lambda g: AdamC(g, lr=1e-3),
    "AdamC (foreach)": lambda g: AdamC(g, lr=1e-3, foreach=True),
    "NormControl(torch Adam fused)": lambda g: NormControl(
        torch.optim.Adam([{**x, "weight_decay": 0.0} for x in g], lr=1e-3, fused=True), target=1.5
    ),
    "CorrectedDecay(torch AdamW fused)": lambda g: CorrectedDecay(torch.optim.AdamW(g, lr=1e-3, fused=True)),
}
SGD_FAMILY = {
    "torch SGD foreach": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, foreach=True),
    "torch SGD fused": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, fused=True),
    "SGDC": lambda g: SGDC(g, lr=0.1, momentum=0.9),
    "SGDC (foreach)": lambda g: SGDC(g, lr=0.1, momentum=0.9, foreach=True),
    "NormControl(torch SGD fused)": lambda g: NormControl(
        torch.optim.SGD([{**x, "weight_decay": 0.0} for x in g], lr=0.1, momentum=0.9, fused=True), target=1.5
    ),
}
LION_FAMILY = {
    "Lion": lambda g: Lion(g, lr=1e-4),
    "NormControl(Lion)": lambda g: NormControl(Lion([{**x, "weight_decay": 0.0} for x in g], lr=1e-4), target=1.5),
}


MUON_FAMILY = {
    "torch Muon + AdamW fused": TorchMuonPlusAdamW,
    "MuonAdamW": lambda g: MuonAdamW(g, lr=1e-3),
    "MuonC": lambda g: MuonC(g, lr=1e-3),
    "NormControl(MuonAdamW)": lambda g: NormControl(
        MuonAdamW([{**x, "weight_decay": 0.0} for x in g], lr=1e-3), target=1.5
    ),
}


MAKERS = {**ADAM_FAMILY, **SGD_FAMILY, **LION_FAMILY, **MUON_FAMILY}


def random_params(shapes, dtype, device: str) -> list[torch.Tensor]:
    """Weights and fixed random gradients of the given shapes."""
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype, device=device).mul_(0.02).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p).mul_(1e-3)
    return params


BASELINES = {  # each optimizer's steps alternate with those of torch's one-pass kernel for its rule
    **{label: ("torch AdamW fused",) for label in ADAM_FAMILY},
    **{label: ("torch SGD fused", "torch SGD foreach") for label in SGD_FAMILY},  # foreach where unfused
    **{label: ("Lion",) for label in LION_FAMILY},  # normctl's Lion: torch has none
    **{label: ("torch Muon + AdamW fused",) for label in MUON_FAMILY},
}
FAMILY_LABELS = {  # the optimizers each model is timed with (Muon: its matrices are 2-d)
    "gpt2": [*ADAM_FAMILY, *SGD_FAMILY, *LION_FAMILY],
    "resnet50": [*ADAM_FAMILY, *SGD_FAMILY, *LION_FAMILY],
    "gpt4x384": list(MUON_FAMILY),
}


def build(make, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    muon = make in MUON_FAMILY.values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make(muon_groups_for(params) if muon else groups_for(params))


def state_bytes(opt) -> int:
    states = [opt.state, *([opt.optimizer.state] if hasattr(opt, "optimizer") else [])]
    return sum(
        t.numel() * t.element_size()
        for state in states
        for s in state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )


def timed_step(opt, cuda: bool) -> float:
    start = time.perf_counter()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def own_copy(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same weights and gradients in other memory: each optimizer of a pair steps its own
    weights, as in training (a kernel that keeps ‖θ‖ between steps finds them as it left them)."""
    copies = [p.detach().clone().requires_grad_() for p in params]
    for copy, p in zip(copies, params):
        copy.grad = p.grad.clone()
    return copies


def time_paired(label: str, params: list[torch.Tensor], repeats: int, device: str, warmup: int = 2) -> dict:
    """``label``'s steps, each after a step of its baseline (its own weights and state, started
    from the same values), so that a slow stretch of the machine falls on both alike; the
    baseline is paired with a second instance of itself, which shows the method's own noise."""
    gc.collect()
    try:
        opt = build(MAKERS[label], params)
    except (RuntimeError, ValueError, TypeError) as error:  # e.g. no fused kernel here
        return {"error": str(error).splitlines()[0]}
    defect = fused_sgd_defect(params)
    for name in BASELINES[label]:
        if name == "torch SGD fused" and defect:
            continue  # a kernel that skips most of the update is no baseline: torch's foreach SGD is
        try:
            baseline = build(MAKERS[name], own_copy(params))
            break
        except (RuntimeError, ValueError, TypeError):
            continue
    else:
        return {"error": f"none of the baselines {BASELINES[label]} runs here"}
    for _ in range(warmup):
        baseline.step()
        opt.step()
    cuda = device == "cuda"
    samples, baseline_samples, peak = [], [], 0
    for _ in range(repeats):
        baseline_samples.append(timed_step(baseline, cuda))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        samples.append(timed_step(opt, cuda))
        if cuda:  # temporaries the step allocates on top of what stays resident
            peak = max(peak, torch.cuda.max_memory_allocated() - resident)
    result = {"baseline": name, "samples": samples, "baseline_samples": baseline_samples}
    if label == "torch SGD fused" and defect:
        result["defect"] = defect
    result["state_bytes"] = state_bytes(opt)
    if cuda:
        result["step_peak_extra_bytes"] = peak
    del opt, baseline
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def run_family(name: str, shapes, dtype, repeats: int, rounds: int, device: str, labels: list[str]) -> dict:
    """Every optimizer once per round, in a shuffled order, on the round's weights and gradients,
    its steps alternating with its baseline's. The ratio is the median of its steps over the
    median of the baseline steps paired with them, pooled over the rounds and within each."""
    n = sum(torch.Size(s).numel() for s in shapes)
    print(f"\n{name}: {len(shapes)} tensors, {n / 1e6:.1f}M parameters, {dtype}, {device}", flush=True)
    results: dict[str, dict] = {}
    for round_ in range(rounds):
        print(f"  round {round_ + 1}/{rounds}", flush=True)
        params = random_params(shapes, dtype, device)
        order = list(labels)
        random.Random(round_).shuffle(order)
        for label in order:
            result = time_paired(label, params, repeats, device)
            if "samples" in result:
                result["ratio_by_round"] = [ratio(result["samples"], result["baseline_samples"])]
            pooled = results.get(label)
            if pooled is None or "error" in pooled:  # a round that ran replaces one that could not
                results[label] = result
            elif "samples" in result:
                for key in ("samples", "baseline_samples", "ratio_by_round"):
                    pooled[key] += result[key]
        del params
    results = {label: results[label] for label in labels}  # the table's order, not the first round's
    for label, r in results.items():
        if "error" in r:
            print(f"  {label:<36} unavailable: {r['error']}", flush=True)
            continue
        pooled_ratio = ratio(r["samples"], r["baseline_samples"])
        r["ratio_to_" + r["baseline"].replace(" ", "_")] = pooled_ratio
        r["seconds"], r["baseline_seconds"] = summary(r.pop("samples")), summary(r.pop("baseline_samples"))
        paired = r["ratio_by_round"]
        print(
            f"  {label:<36} {r['seconds']['median'] * 1e3:8.1f} ms  IQR [{r['seconds']['q1'] * 1e3:.1f}, "
            f"{r['seconds']['q3'] * 1e3:.1f}]  x{pooled_ratio:5.2f} vs "
            f"{r['baseline']} (rounds {min(paired):.2f}-{max(paired):.2f})  state {r['state_bytes'] / 2**20:.0f} MiB"
            + (f"  step peak +{r['step_peak_extra_bytes'] / 2**20:.0f} MiB" if "step_peak_extra_bytes" in r else "")
            + (f"\n    defective here: {r['defect']}" if "defect" in r else ""),
            flush=True,
        )
    return {"tensors": len(shapes), "parameters": n, "dtype": str(dtype), "device": device, "results": results}


def ratio(samples: list[float], baseline_samples: list[float]) -> float:
    return statistics.median(samples) / statistics.median(baseline_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["gpt2", "resnet50", "gpt4x384", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per optimizer and round")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all optimizers, samples pooled")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tag", default="", help="a suffix for the file written (e.g. torch2.14 for another torch)")
    parser.add_argument(
        "--only", default="", help="comma-separated parts of names: time those alone (printed, not written)"
    )
    args = parser.parse_args()
    parts = [part for part in args.only.split(",") if part]
    labels = [label for label in MAKERS if not parts or any(part in label for part in parts)]
    if not labels:
        parser.error(f"--only {args.only!r} matches none of {list(MAKERS)}")
    dtype = getattr(torch, args.dtype)
    families = {"gpt2": gpt2_small_shapes, "resnet50": resnet50_shapes, "gpt4x384": gpt4x384_shapes}
    for family in ["gpt2", "resnet50"] if args.family == "both" else [args.family]:
        chosen = [label for label in labels if label in FAMILY_LABELS[family]]
        if not chosen:
            continue
        result = run_family(family, families[family](), dtype, args.repeats, args.rounds, args.device, chosen)
        if parts:
            continue
        result["machine"] = machine()
        result["adamwn_one_pass_cpu_kernel"] = _one_pass_cpu.kernel() is not None
        suffix = ("" if args.dtype == "float32" else f"_{args.dtype}") + ("" if args.device == "cpu" else "_cuda")
        suffix += f"_{args.tag}" if args.tag else ""
        print("  ->", write_json(f"step_speed_{family}{suffix}", result))


if __name__ == "__main__":
    main()
