"""Peer methods through the same harness and monitor (the lab's ``peers`` extra):

* ``adamcpr`` — constrained parameter regularisation, the ``pytorch-cpr`` package's ``AdamCPR``:
  Adam with an upper bound on each regularised tensor's ‖θ‖², set during training (by default at
  the inflection point of its growth; ``cpr_kappa_init`` and ``cpr_kappa_param`` choose another
  of its rules). Regularised: the groups ``param_groups`` gives a weight decay.
* ``hyperball`` — a norm held at its initial value: HeavyBall's ``HyperBallAdamW`` (matrices kept on
  the sphere of their initial norm, 1-D tensors plain Adam), with HeavyBall's ``torch.compile``
  turned off so that it runs on any CPU.

Each run's ``environment.json`` names the package and its version.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PEERS = {"adamcpr": "pytorch-cpr", "hyperball": "heavyball"}
CPR_KAPPA_INITS = ("inflection_point", "warm_start", "uniform", "dependent")


def build_peer(
    method: str,
    groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float] | None,
    kappa_init: str = "inflection_point",
    kappa_param: float = 1000.0,
) -> torch.optim.Optimizer:
    """The peer optimizer ``method`` over normctl's param groups (their ``params`` and ``weight_decay``)."""
    betas = betas or (0.9, 0.999)
    if method == "adamcpr":
        cpr = _require("pytorch_cpr", method)
        if kappa_init not in CPR_KAPPA_INITS:
            raise ValueError(f"cpr_kappa_init must be one of {CPR_KAPPA_INITS}, got {kappa_init!r}")
        # pytorch-cpr calls a torch function torch deprecated: once per step, nothing the user can act on
        warnings.filterwarnings("ignore", message=r".*torch\._utils\.is_compiling.*", module="pytorch_cpr")
        plain = [{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0), **_name(g)} for g in groups]
        return cpr.AdamCPR(plain, lr=lr, betas=betas, kappa_init_method=kappa_init, kappa_init_param=kappa_param)
    if method == "hyperball":
        heavyball = _require("heavyball", method)
        from heavyball import utils

        utils.compile_mode = None  # eager: HeavyBall compiles its steps by default
        # a scheduled lr is supported on the multi-tensor path HeavyBall takes here, as its warning says
        warnings.filterwarnings("ignore", message="Learning rate changed between steps", module="heavyball")
        plain = [{"params": g["params"], "weight_decay": 0.0, **_name(g)} for g in groups]
        return heavyball.HyperBallAdamW(plain, lr=lr, betas=betas, compile_step=False)
    raise ValueError(f"unknown peer method {method!r}; peers are {sorted(PEERS)}")


def _name(group: dict) -> dict:
    """The group's name, which the monitor labels its records with."""
    return {"name": group["name"]} if "name" in group else {}


def peer_versions() -> dict[str, str]:
    """The installed peer packages and their versions."""
    versions = {}
    for package in PEERS.values():
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def peer_package(method: str, run_dirs: Iterable[Path]) -> str | None:
    """The package the runs of ``method`` trained with and its version, as their environment.json
    recorded it at the start and at every resume (``"pytorch-cpr 0.3.1"``; versions that differ
    between runs are all named); None for normctl's own methods."""
    if method not in PEERS:
        return None
    package = PEERS[method]
    versions = set()
    for run_dir in run_dirs:
        path = Path(run_dir) / "environment.json"
        if not path.is_file():
            versions.add("version not recorded")
            continue
        environment = json.loads(path.read_text())
        for record in [environment, *environment.get("resumed", [])]:
            if package in record.get("peers", {}):
                versions.add(record["peers"][package])
    return f"{package} {' / '.join(sorted(versions)) or 'version not recorded'}"


def _require(module: str, method: str) -> Any:
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"method {method!r} needs the {PEERS[method]} package: pip install 'normctl-lab[peers]'"
        ) from error
