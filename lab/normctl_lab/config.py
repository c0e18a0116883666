"""Experiment configuration: one frozen dataclass, overridable from the command line."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parallel import DEVICES, PARALLEL_MODES
from .voronoi import ACTIVATIONS as VORONOI_ACTIVATIONS
from .voronoi import INITS

TASKS = ("gpt", "voronoi", "fmnist", "torchlm")
PLAIN_METHODS = ("adamw", "adamwn", "adamc", "muon", "sgd", "sgdc")
SCHEDULES = ("cosine", "constant")
ON_NONFINITE = ("stop", "skip")
AUTO_RULES = ("", "equilibrium", "inflection")
DECAYS = ("l2", "l1", "min")
CORPORA = ("austen", "kjv", "brown")
SCOPES = ("tensor", "group", "global")
TARGET_SHAPES = ("ramp", "constant", "linear")
ACTIVATIONS = tuple(VORONOI_ACTIVATIONS)
SIZES = (  # counts that must be at least 1
    "steps",
    "batch_size",
    "checkpoint_every",
    "monitor_every",
    "block_size",
    "n_layer",
    "n_embd",
    "hidden",
    "width",
    "blocks_per_stage",
)


@dataclass(frozen=True)
class RunConfig:
    task: str = "gpt"  # "gpt" (byte-level Austen), "voronoi" (Yu 2022), "fmnist" (ResNet), "torchlm" (torch's blocks)
    label: str = ""  # what the report groups seeds under (default: the method)
    method: str = "adamw"  # any normctl.create_optimizer name
    steps: int = 600  # optimizer steps
    lr: float = 3e-3  # peak, Adam scale (SGD 100×, Lion 0.1×)
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio × the peak after warm-up) or "constant"
    warmup: int = 20  # linear warm-up steps of the cosine schedule
    min_lr_ratio: float = 0.1  # the cosine schedule's final lr, as a fraction of the peak
    weight_decay: float = 0.1  # λ on the decayed groups of normctl.param_groups
    rate: float = 1e-2  # k of norm-controlled methods
    betas: str = "0.9,0.999"  # Adam-family β1,β2
    decay: str = "l2"  # decoupled decay type of AdamW/AdamC: "l2", "l1" or "min" (Yu 2022)
    decay_all: bool = False  # decay every parameter (norm gains too), as the Voronoi study does
    target_ratio: float = 1.0  # their final target r (as target_shape says); target_ratio=auto: auto_target
    auto_target: str = ""  # "" (target_ratio), "equilibrium" or "inflection": the target measured in the run itself
    auto_decay: float = 0.1  # auto_target=equilibrium: the AdamW λ whose steady-state norm is targeted
    auto_steps: int = 200  # auto_target=equilibrium: the measuring window (AdamW with auto_decay meanwhile)
    auto_interval: int = 100  # auto_target=inflection: steps between growth measurements
    auto_run_length: bool = False  # auto_target=equilibrium: AdamW's norm at the run's end, not its asymptotic one
    auto_without_length: str = "asymptotic"  # auto_target=equilibrium without auto_run_length: or "hold"
    auto_alignment: bool = False  # auto_target=equilibrium: carry the update's alignment forward (docs/math.md)
    auto_shared_ratio: bool = False  # auto_target: one ratio for every tensor of a group (AutoTarget(shared_ratio))
    plain: bool = False  # the optimizer over model.parameters() with its own defaults (the call users write)
    cpr_kappa_init: str = "inflection_point"  # method=adamcpr: its bound's rule (or warm_start, uniform, dependent)
    cpr_kappa_param: float = 1000.0  # method=adamcpr: that rule's parameter (warm-start steps, the bound, a factor)
    target_shape: str = "ramp"  # r_t: "ramp" 1 → r over 5 % of steps (the paper), "constant" r, "linear" over the run
    scope: str = "tensor"  # norm-controlled methods: one norm per "tensor", per "group", or "global"
    control_gains: bool = False  # norm-controlled methods also control the norm layers' gains
    gains_target_ratio: float | None = None  # with control_gains: the gains' own r (None: target_ratio)
    gains_by_decay: bool = False  # with decay_all: norm-controlled methods decay the gains as AdamW does
    control_output: bool = True  # norm-controlled methods hold the output layer's norm (false: AdamW's decay there)
    batch_size: int = 16  # examples per step (sequences, points or images)
    seed: int = 0  # model init and data order
    checkpoint_every: int = 100  # steps between atomic checkpoints
    monitor_every: int = 10  # NormMonitor interval
    eval_every: int = 0  # steps between held-out evaluations written to evals.jsonl (0: only at the end)
    selection_split: float = 0.0  # the fraction of the training data held out to select knobs on (normctl-lab tune)
    on_nonfinite: str = "stop"  # a NaN/Inf loss: "stop" the run (final.json says diverged) or "skip" the step
    # GPT
    corpus: str = "austen"  # the embedded English text: "austen", "kjv" or "brown" (byte-level)
    block_size: int = 64  # GPT context, in bytes
    n_layer: int = 2  # GPT transformer blocks
    n_embd: int = 96  # GPT width (4 heads)
    gpt_init: str = "gpt2"  # "gpt2" (nanoGPT's N(0, 0.02)) or "torch" (PyTorch's defaults: N(0, 1) embeddings)
    # Voronoi
    hidden: int = 512  # Voronoi model width
    activation: str = "relu"  # "relu", "swish" or "gelu"
    rms: bool = False  # RMS normalisation in the scale-only norms (off: the Voronoi study's baseline)
    init: str = "uniform"  # "uniform" (PyTorch default) or "normal"
    # Fashion-MNIST ResNet
    width: int = 8  # channels of the first stage (16 = ResNet-20)
    blocks_per_stage: int = 1  # ResNet residual blocks in each of its 3 stages
    full_data: bool = False  # the full 60k/10k set (make data) instead of the embedded sample
    # Hardware
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    parallel: str = "ddp"  # under torchrun: "ddp" (replicate) or "fsdp" (FSDP2 shards)
    compile: bool = False  # torch.compile the model

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        for name in SIZES:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "target_ratio", "warmup"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {CORPORA}, got {self.corpus!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.target_shape not in TARGET_SHAPES:
            raise ValueError(f"target_shape must be one of {TARGET_SHAPES}, got {self.target_shape!r}")
        try:
            beta1, beta2 = self.adam_betas
        except ValueError as error:
            raise ValueError(f"betas must be two numbers 'b1,b2', got {self.betas!r}") from error
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {self.betas!r}")
        if self.auto_target not in AUTO_RULES:
            raise ValueError(f"auto_target must be one of {AUTO_RULES}, got {self.auto_target!r}")
        if self.auto_target and not (self.auto_decay > 0 and self.auto_steps >= 1 and self.auto_interval >= 1):
            raise ValueError("auto_decay must be > 0, auto_steps and auto_interval >= 1")
        if self.gpt_init not in ("gpt2", "torch"):
            raise ValueError(f"gpt_init must be 'gpt2' or 'torch', got {self.gpt_init!r}")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {self.on_nonfinite!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.gains_target_ratio is not None:
            if not self.control_gains:
                raise ValueError("gains_target_ratio needs control_gains=true")
            if not self.gains_target_ratio >= 0:
                raise ValueError(f"gains_target_ratio must be >= 0, got {self.gains_target_ratio}")
        if not 0 <= self.selection_split < 0.5:
            raise ValueError(f"selection_split must be in [0, 0.5), got {self.selection_split}")
        if self.plain and self.method not in PLAIN_METHODS:
            raise ValueError(f"plain=true is for methods {PLAIN_METHODS}, got {self.method!r}")
        if self.selection_split and self.task == "voronoi":
            raise ValueError("selection_split is for gpt and fmnist: the Voronoi task selects on its own val_acc draw")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    @property
    def auto(self):
        """The :class:`normctl.AutoTarget` this config asks for, or None."""
        if not self.auto_target:
            return None
        from normctl import AutoTarget

        # the lab's runs without the length keep the asymptotic rule they were made with
        length = (
            dict(total_steps=self.steps, lr_schedule=self.lr_multiplier)
            if self.auto_run_length
            else dict(without_length=self.auto_without_length)
        )
        return AutoTarget(
            rule=self.auto_target,
            weight_decay=self.auto_decay,
            steps=self.auto_steps,
            interval=self.auto_interval,
            alignment=self.auto_alignment,
            shared_ratio=self.auto_shared_ratio,
            **length,
        )

    @property
    def lr_multiplier(self):
        """η_t, the run's lr multiplier (γ_t = lr·η_t): constant, or cosine to min_lr_ratio after warm-up."""
        from normctl import schedules

        if self.schedule == "constant":
            return schedules.constant(1.0)
        return schedules.cosine(1.0, self.min_lr_ratio, self.steps, warmup=min(self.warmup, self.steps))

    @property
    def adam_betas(self) -> tuple[float, float]:
        beta1, beta2 = (float(b) for b in self.betas.split(","))
        return beta1, beta2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)} in {path}")
        return cls(**data)


def with_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply ``key=value`` strings, converting each value to the field's type."""
    types = typing.get_type_hints(RunConfig)
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if key == "target_ratio" and raw.startswith("auto"):  # target_ratio=auto[:inflection]
            key, raw = "auto_target", raw.partition(":")[2] or "equilibrium"
        if not sep:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"unknown config field {key!r}: {hint}(`normctl-lab train --help` lists them all)")
        kind = types[key]
        if type(None) in typing.get_args(kind):  # ``float | None``: "none" clears it
            if raw.lower() in ("none", "null"):
                changes[key] = None
                continue
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key} must be true or false, got {raw!r}")
            changes[key] = raw.lower() in ("true", "1")
            continue
        try:
            changes[key] = kind(raw) if kind in (int, float, str) else raw
        except ValueError as error:
            raise ValueError(f"{key} must be {kind.__name__}, got {raw!r}") from error
    return dataclasses.replace(cfg, **changes)


def field_help() -> str:
    """Every RunConfig field with its type, default and meaning (the comment beside it in this
    file), for ``normctl-lab train --help``."""
    comments = {}
    for line in inspect.getsource(RunConfig).splitlines():
        found = re.match(r"\s{4}(\w+): [^=]+=[^#]*#\s*(.*)$", line)
        if found:
            comments[found.group(1)] = found.group(2)
    hints = typing.get_type_hints(RunConfig)
    lines = ["config fields (--set KEY=VALUE; a JSON file of them as CONFIG):"]
    for f in dataclasses.fields(RunConfig):
        kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  {f.name} ({kind}, default {f.default!r}): {comments.get(f.name, '')}".rstrip(": "))
    return "\n".join(lines)
