"""The search spaces of ``normctl-lab tune``: each method's knobs, their ranges, and the points
the search trains — the same budget for every method, spread evenly over its own space.

A :class:`Knob` is a numeric RunConfig field searched log-uniformly (or linearly) over a range,
scaled by the base config's lr or steps where the range is relative; a :class:`Choice` is a
categorical one. :func:`candidates` draws the points from one scrambled Sobol sequence with a
fixed seed, each knob reading its own coordinate (:data:`KNOB_COORDINATES`) whatever the method's
other knobs: every method that shares a knob tries the same values of it — the same learning rates
for a 1-knob method as for a 3-knob one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .config import RunConfig, with_overrides


@dataclass(frozen=True)
class Knob:
    """A numeric RunConfig field searched over [low, high] (× the base config's ``relative_to``)."""

    field: str
    low: float
    high: float
    log: bool = True
    relative_to: str = ""  # "lr" or "steps": the range scales with the base config's value
    integer: bool = False

    def bounds(self, base: RunConfig) -> tuple[float, float]:
        """[low, high] for ``base``: scaled by its ``relative_to`` field where the knob has one."""
        scale = float(getattr(base, self.relative_to)) if self.relative_to else 1.0
        return self.low * scale, self.high * scale

    def value(self, u: float, base: RunConfig) -> float | int:
        low, high = self.bounds(base)
        x = math.exp(math.log(low) + u * math.log(high / low)) if self.log else low + u * (high - low)
        return max(1, round(x)) if self.integer else float(f"{x:.4g}")  # 4 digits: readable, nothing lost

    def at_edge(self, value: float, base: RunConfig) -> bool:
        """In the outer 10 % of the range (in its own scale): the best may lie outside."""
        low, high = self.bounds(base)
        position = math.log(value / low) / math.log(high / low) if self.log else (value - low) / (high - low)
        return not 0.1 <= position <= 0.9


@dataclass(frozen=True)
class Choice:
    """A categorical RunConfig field: one of ``options``."""

    field: str
    options: tuple[str, ...]

    def value(self, u: float, base: RunConfig) -> str:
        return self.options[min(int(u * len(self.options)), len(self.options) - 1)]

    def at_edge(self, value: str, base: RunConfig) -> bool:
        return False


@dataclass(frozen=True)
class SearchSpace:
    """A method as the protocol tunes it: fixed fields, then the knobs searched."""

    fixed: dict[str, str]
    knobs: tuple[Knob | Choice, ...]


# lr is the Adam-scale peak (SGD and SGDC train at 100× it, see methods.BASE_LR_SCALE).
LR = Knob("lr", 0.25, 4.0, relative_to="lr")
ADAM_DECAY = Knob("weight_decay", 1e-3, 1.0)  # decoupled, multiplied by the lr in the step
SGD_DECAY = Knob("weight_decay", 1e-5, 1e-2)  # coupled L2: the ImageNet scale (5e-5 – 1e-4) and 100× it
SEARCH_SPACES = {
    "adamw": SearchSpace({"method": "adamw"}, (LR, ADAM_DECAY)),
    "adamc": SearchSpace({"method": "adamc"}, (LR, ADAM_DECAY)),
    "sgd": SearchSpace({"method": "sgd"}, (LR, SGD_DECAY)),
    "sgdc": SearchSpace({"method": "sgdc"}, (LR, SGD_DECAY)),
    "adamwn": SearchSpace({"method": "adamwn"}, (LR, Knob("target_ratio", 0.25, 8.0), Knob("rate", 1e-3, 1e-1))),
    # the automatic target's knob is the AdamW λ whose steady-state norm it aims for
    "adamwn-auto": SearchSpace(
        {"method": "adamwn", "auto_target": "equilibrium", "auto_run_length": "true"},
        (LR, Knob("auto_decay", 1e-2, 1.0)),
    ),
    # Muon on the hidden matrices, AdamW (AdamC) on the rest, one lr and λ (adjust_lr_fn="match_rms_adamw")
    "muon": SearchSpace({"method": "muon"}, (LR, ADAM_DECAY)),
    "muonc": SearchSpace({"method": "muonc"}, (LR, ADAM_DECAY)),
    "muon+wn": SearchSpace({"method": "muon+wn"}, (LR, Knob("target_ratio", 0.25, 8.0), Knob("rate", 1e-3, 1e-1))),
    # target="auto" on Muon's matrices: the norm decoupled decay would hold them at, with the updates'
    # measured alignment (docs/math.md: Muon's momentum-built updates settle it sqrt(1 + 2a)× higher)
    "muon+wn-auto": SearchSpace(
        {"method": "muon+wn", "auto_target": "equilibrium", "auto_run_length": "true", "auto_alignment": "true"},
        (LR, Knob("auto_decay", 1e-2, 1.0)),
    ),
    "adamcpr": SearchSpace(
        {"method": "adamcpr"},
        (
            LR,
            Choice("cpr_kappa_init", ("inflection_point", "warm_start")),
            # the warm-start rule's steps before the bound is set; unused by the inflection point
            Knob("cpr_kappa_param", 0.02, 0.3, relative_to="steps", integer=True),
        ),
    ),
    "hyperball": SearchSpace({"method": "hyperball"}, (LR,)),
}


# Each knob's coordinate of the one 3-dimensional Sobol sequence every method's points come from
# (3: the most knobs a method has). A scrambled Sobol sequence's coordinates depend on its dimension,
# so a sequence per method (as tunings made before "points": "shared" did) gave a 1-knob method
# other learning rates than a 3-knob one. A method's knobs read distinct coordinates, its second
# knob the second: the first two coordinates of a Sobol sequence pair evenly (each AdamCPR bound
# rule sees learning rates across the whole range, not the low half).
KNOB_COORDINATES = {
    "lr": 0,
    "weight_decay": 1,
    "target_ratio": 1,
    "auto_decay": 1,
    "cpr_kappa_init": 1,
    "rate": 2,
    "cpr_kappa_param": 2,
}
POINTS = "shared"  # protocol.json's "points": how candidates() draws (absent: one sequence per method)


def candidates(
    space: SearchSpace, base: RunConfig, budget: int, seed: int = 0, points: str = POINTS
) -> list[dict[str, Any]]:
    """``budget`` points of ``space``: the knobs' values at scrambled Sobol points (the same for
    every call with this ``seed``), each with the space's fixed fields. ``points="shared"``: each
    knob reads its coordinate of :data:`KNOB_COORDINATES`, so methods sharing a knob try the same
    values of it; ``"per_method"``: one sequence of the method's own dimension (tunings written
    before, whose searched runs keep their configurations)."""
    if not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    if points == "shared":
        unknown = [k.field for k in space.knobs if k.field not in KNOB_COORDINATES]
        if unknown:
            raise ValueError(f"knobs {unknown} have no coordinate in KNOB_COORDINATES")
        columns = [KNOB_COORDINATES[k.field] for k in space.knobs]
        draws = _sobol(max(KNOB_COORDINATES.values()) + 1, budget, seed)[:, columns]
    elif points == "per_method":
        draws = _sobol(len(space.knobs), budget, seed)
    else:
        raise ValueError(f"points must be 'shared' or 'per_method', got {points!r}")
    return [
        space.fixed | {knob.field: knob.value(float(u), base) for knob, u in zip(space.knobs, point)} for point in draws
    ]


def _sobol(dimension: int, n: int, seed: int) -> torch.Tensor:
    return torch.quasirandom.SobolEngine(dimension, scramble=True, seed=seed).draw(n, dtype=torch.float64)


def search_space(method: str) -> SearchSpace:
    """The space ``method`` names: one of :data:`SEARCH_SPACES`, or one with fields fixed after
    it — ``adamw+decay=min`` (``+weight_decay=1``, …) is AdamW with Yu's (2022) min decay, its
    remaining knobs searched as AdamW's: how ablations are tuned against their baseline in one
    tuning, with the same budget and paired differences."""
    # the longest space the name starts with: "muon+wn" is a space, "adamw+decay=min" one with a field fixed
    name = max(
        (n for n in SEARCH_SPACES if method == n or method.startswith(n + "+")), key=len, default=method.split("+")[0]
    )
    assignments = method[len(name) :].split("+")[1:]
    if name not in SEARCH_SPACES:
        raise ValueError(f"methods must be some of {sorted(SEARCH_SPACES)} (+KEY=VALUE fixes a field), got {method!r}")
    space = SEARCH_SPACES[name]
    fixed = dict(a.partition("=")[::2] for a in assignments)
    malformed = [a for a in assignments if "=" not in a or not a.partition("=")[0]]
    if malformed or len(fixed) != len(assignments):
        raise ValueError(f"method {method!r}: each field fixed after the name is one distinct KEY=VALUE")
    if fixed.keys() & {"method", "seed", "label"}:
        raise ValueError(f"method {method!r}: method, seed and label are the protocol's to set")
    with_overrides(RunConfig(), as_overrides(fixed))  # an unknown field or a bad value fails here, named
    knobs = tuple(k for k in space.knobs if k.field not in fixed)  # a fixed field is no longer searched
    if not knobs:
        raise ValueError(f"method {method!r} fixes every knob of {name}: nothing is left to search")
    return SearchSpace(space.fixed | fixed, knobs)


def restricted(
    space: SearchSpace, knobs: list[str] | None, ranges: dict[str, tuple[float, float]] | None = None
) -> SearchSpace:
    """``space`` searching only the fields ``knobs`` (all of them when None), over ``ranges``
    (absolute bounds) where given."""
    kept = space.knobs if knobs is None else tuple(k for k in space.knobs if k.field in knobs)
    if not kept:
        fields = [k.field for k in space.knobs]
        raise ValueError(f"knobs {knobs} leave nothing to search for {space.fixed}: its knobs are {fields}")
    ranges = ranges or {}
    kept = tuple(
        dataclasses.replace(k, low=ranges[k.field][0], high=ranges[k.field][1], relative_to="")
        if isinstance(k, Knob) and k.field in ranges
        else k
        for k in kept
    )
    return SearchSpace(space.fixed, kept)


def checked_ranges(
    ranges: dict[str, tuple[float, float]] | None, spaces: dict[str, SearchSpace]
) -> dict[str, tuple[float, float]] | None:
    """``ranges`` as floats, each naming a numeric knob of some method's space, 0 < low < high."""
    if not ranges:
        return None
    methods = list(spaces)
    numeric = {k.field for space in spaces.values() for k in space.knobs if isinstance(k, Knob)}
    checked = {}
    for field, bounds in ranges.items():
        if field not in numeric:
            raise ValueError(f"ranges: {field!r} is no numeric knob of {methods}; they have {sorted(numeric)}")
        low, high = (float(b) for b in bounds)
        if not 0 < low < high:
            raise ValueError(f"ranges: {field} needs 0 < low < high, got {low:g}:{high:g}")
        checked[field] = (low, high)
    return checked


def as_overrides(fields: dict[str, Any]) -> list[str]:
    """``fields`` as ``--set``'s KEY=VALUE strings (booleans as the config files spell them)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items()]
