"""NormMonitor: what weight decay and norm control are doing to a run, for any torch optimizer."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..distributed import check_supported, is_writer, local, reduce_across_shards
from ..optim import AdamWN
from ..optim._base import as_number, peak_lr
from ..rules import tensor_norms
from . import forecast, stats
from .forecast import Forecast, Series
from .sinks import Sink

KEPT_GROUP_RECORDS = 2048  # the group-level records a monitor keeps for its forecast


class NormMonitor:
    """Per-tensor, per-layer, per-group and global norms, ratios and steady-state predictions.

    Attach it once; it hooks into ``optimizer.step()`` and measures every ``every``-th step::

        monitor = NormMonitor(model, optimizer, every=10, sinks=[JsonlSink(run_dir)])
        for batch in loader:
            loss = ...; loss.backward()
            optimizer.step()
            monitor.observe(loss=loss)   # adds the loss and writes the record to the sinks
            optimizer.zero_grad()

    Keys are ``"<scope>/<name>/<metric>"`` with scope ``tensor`` (each parameter), ``layer``
    (the module that owns it), ``group`` (the optimizer's param group, by its ``name`` key or
    index) and ``global``; plus ``lr/<group>``, ``loss`` and ``step`` (optimizer steps taken),
    and ``global/clipped_grad_norm`` where the gradients were taken before clipping
    (:meth:`capture_gradients`, the framework callbacks).

    Metrics per tensor: ``weight_norm``, ``weight_linf``, ``norm_ratio`` (to the norm at
    construction), ``weight_min/mean/max``, ``grad_norm``, ``grad_weight_ratio`` (‖g‖/‖θ‖),
    ``update_weight_ratio`` (‖θ_t − θ_{t−1}‖/‖θ_{t−1}‖), ``adam_grad_weight_ratio``
    (‖g‖_{A⁻¹}/‖θ‖_A for Adam-family state), the predictions ``pred_ratio`` and ``pred_linf``
    of :mod:`normctl.monitor.stats`, and for AdamWN-controlled tensors ``target_norm`` and
    ``norm_deviation`` (‖θ‖/τ − 1). Per group with decoupled decay (AdamW, AdamC, AdamWN's
    uncontrolled groups, torch's Muon), what :meth:`forecast` reads: ``update_size`` (‖u‖, the
    update per unit of lr without the decay), ``update_cosine`` (its cosine with −θ: > 0 outward) and
    ``weight_decay`` (the λ applied this step).

    ``on_multiples=True`` measures steps every, 2·every, … instead of 1, 1 + every, …: the steps a
    framework logs on (the callbacks use it, with the framework's logging interval).

    Under ``torchrun`` every process measures (sharded norms need them all) and the process of
    ``writer_rank`` (0; None: every process, each to sinks of its own) writes the records.

    Read-only: it never writes into param groups or state. Cost: nothing on the steps it skips;
    on a measured step one copy of the weights (for the update ratio), batched
    ``torch._foreach_norm`` calls and a single device-to-host transfer.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        every: int = 10,
        sinks: Iterable[Sink] = (),
        weighted_norms: bool = True,
        value_ranges: bool = True,
        writer_rank: int | None = 0,
        on_multiples: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.optimizer = optimizer
        self.every = every
        self.sinks = list(sinks)
        self.on_multiples = on_multiples
        # under torchrun every rank measures (sharded norms need them all), one writes the records
        self._writes = is_writer(writer_rank)
        self.weighted_norms = weighted_norms
        self.value_ranges = value_ranges
        names = {p: name for name, p in model.named_parameters()}
        self._params: list[Tensor] = []
        self._names: list[str] = []
        self._group_index: list[int] = []
        for gi, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                self._params.append(p)
                self._names.append(names.get(p, f"param{len(self._params) - 1}"))
                self._group_index.append(gi)
        self._labels = [str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)]
        check_supported(self._params, type(self).__name__)
        with torch.no_grad():
            self._initial = [float(n) for n in tensor_norms([p.detach() for p in self._params])]
        self.steps = 0
        self._group_records: list[dict[str, Any]] = []
        self._before: tuple[list[Tensor], list[Tensor | None] | None] | None = None
        self._captured: list[Tensor | None] | None = None
        # Set by an integration that calls capture_gradients() on every measured step (Lightning):
        # the pre-step hook then skips its own gradient pass, whose gradients would be replaced.
        self.gradients_captured = False
        self._pending: dict[str, Any] | None = None
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _due(self) -> bool:
        """Whether the coming step is measured: steps 1, 1 + every, … or, ``on_multiples``,
        every, 2·every, … (a framework's logging steps)."""
        return (self.steps + 1) % self.every == 0 if self.on_multiples else self.steps % self.every == 0

    # -- hooks --------------------------------------------------------------------------------

    @torch.no_grad()
    def _before_step(self, optimizer, args, kwargs) -> None:
        if not self._due():
            return
        self._flush()
        # a closure's backward runs after this hook: capture_gradients may still come
        grad_norms = None if self._captured is not None or self.gradients_captured else self._grad_norms()
        self._before = ([p.detach().clone() for p in self._params], grad_norms)

    def _grad_norms(self) -> list[Tensor | None]:
        grads = [p.grad for p in self._params]
        norms = iter(tensor_norms([g for g in grads if g is not None]))
        return [next(norms) if g is not None else None for g in grads]

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self._before is not None:
            self._pending = self._measure()
            self._before = None

    # -- public -------------------------------------------------------------------------------

    @torch.no_grad()
    def capture_gradients(self) -> None:
        """Take the coming step's gradient norms now: call it after backward and before anything
        clips the gradients or steps through a closure (whose backward runs inside ``step()``,
        after the hook this monitor measures in). The record then reports these norms as
        ``grad_norm`` and the global norm the optimizer stepped with as
        ``global/clipped_grad_norm``. Does nothing on steps that are not measured."""
        if self._due():
            self._captured = self._grad_norms()

    @property
    def pending(self) -> dict[str, Any] | None:
        """The record of the step just measured, not yet written (``observe`` writes it), for a
        framework integration to complete; None when the last step was not measured."""
        return self._pending

    def observe(self, loss: Tensor | float | None = None, **extra: float) -> dict[str, Any] | None:
        """Attach the loss (and any extra scalars) to the step just measured and write it.

        Returns the record, or None when this step was not a measured one.
        """
        record, self._pending = self._pending, None
        if record is None:
            return None
        # what a forecast reads, kept for the run: the group-level entries (a few per group), every
        # other one dropped past KEPT_GROUP_RECORDS (a long run's history stays in bounds, the last kept)
        self._group_records.append({k: v for k, v in record.items() if k == "step" or k.startswith(("group/", "lr/"))})
        if len(self._group_records) > KEPT_GROUP_RECORDS:
            self._group_records = self._group_records[-2::-2][::-1] + self._group_records[-1:]
        if loss is not None:
            record["loss"] = float(loss.detach() if isinstance(loss, Tensor) else loss)
        record.update({k: float(v) for k, v in extra.items()})
        if self._writes:
            for sink in self.sinks:
                sink.write(record)
        return record

    def forecast(
        self, total_steps: int, lr_schedule: Callable[[int], float] | None = None, *, source: str = "norms"
    ) -> list[Forecast]:
        """Each group's norm ratio and ‖g‖/‖θ‖ at step ``total_steps``, predicted from the updates
        measured so far (a few % of the run is enough) by the ODE ``target="auto"`` uses
        (:mod:`normctl.monitor.forecast`). ``lr_schedule`` is the lr multiplier η_t of the run
        (γ_t = γ_max·η_t, the function given to ``LambdaLR``); without it the lr and decay of
        the last measured step are held to the end (the norm then heads for that lr's steady state,
        not for the norm a decaying schedule freezes at).
        Groups with decoupled decay (AdamW, AdamC, AdamWN's uncontrolled groups, torch's Muon)
        are forecast; ``print(*monitor.forecast(...), sep="\n")`` says it in words. ``source``:
        the update carried forward, ``"norms"`` (the one that moved each group's norm) or
        ``"updates"`` (the measured size and cosine; :func:`normctl.monitor.forecast.from_records`)."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < self.steps:
            raise ValueError(f"total_steps must be an int >= the steps taken ({self.steps}), got {total_steps!r}")

        decayed = forecast.group_labels(self._group_records, "weight_decay")  # decoupled decay, measured

        def future(label: str) -> tuple[Series, Series] | None:
            if lr_schedule is None or label not in decayed:
                return None
            group = self.optimizer.param_groups[self._labels.index(label)]
            peak = as_number(peak_lr(group))
            corrected = stats.is_corrected(self.optimizer, group)  # λ_t = λ·γ_t/γ_max
            return forecast.scheduled(peak, lr_schedule, group.get("weight_decay", 0.0), peak if corrected else None)

        return forecast.from_records(self._group_records, total_steps=total_steps, future=future, source=source)

    @property
    def group_records(self) -> list[dict[str, Any]]:
        """The group-level entries of the records written so far (thinned past
        ``KEPT_GROUP_RECORDS``): what :meth:`forecast` and the callbacks' verdict read."""
        return list(self._group_records)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same records: the step count, the initial
        norms (which the resumed weights no longer show) and the group-level records a forecast
        reads."""
        return {"steps": self.steps, "initial_norms": list(self._initial), "group_records": list(self._group_records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["initial_norms"]) != len(self._params):
            raise ValueError(
                f"monitor state has {len(state['initial_norms'])} tensors, this monitor {len(self._params)}"
            )
        self.steps = int(state["steps"])
        self._initial = [float(n) for n in state["initial_norms"]]
        self._group_records = list(state.get("group_records", []))  # states saved before forecasts: none

    def close(self) -> None:
        """Write any unobserved record, remove the hooks and close the sinks."""
        self._flush()
        for hook in self._hooks:
            hook.remove()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> NormMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        if self._pending is not None:
            self.observe()

    # -- measurement --------------------------------------------------------------------------

    def _measure(self) -> dict[str, Any]:
        params = [p.detach() for p in self._params]
        before, at_step = self._before  # type: ignore[misc]
        captured, self._captured = self._captured, None
        grad_norm_t = captured if captured is not None else at_step
        if grad_norm_t is None:  # promised a capture that did not come: the gradients the step used
            grad_norm_t = self._grad_norms()

        host = _OneTransfer()  # every scalar below crosses to the host in one transfer
        w_slot = host.add(tensor_norms(params))
        before_slot = host.add(tensor_norms(before))
        linf_slot = host.add(stats.linf_norms(params))
        upd_slot = host.add(stats.update_norms(params, before))
        g_slot = host.add(grad_norm_t)
        ranges = stats.value_ranges(params) if self.value_ranges else [None] * len(params)
        range_slots = [host.add(r) if r is not None else None for r in ranges]
        weighted_slots = self._enqueue_weighted_norms(params, host.add)
        update_slots = self._enqueue_update_sizes(params, before, host.add)
        stepped_slot = host.add(self._grad_norms()) if captured is not None else []  # those the step used
        host.transfer()

        groups = self.optimizer.param_groups
        predictions = [stats.predict(self.optimizer, g) for g in groups]
        targets = self._adamwn_targets()
        record: dict[str, Any] = {"step": self.steps}
        for gi, label in enumerate(self._labels):
            record[f"lr/{label}"] = as_number(groups[gi].get("lr"))  # a tensor lr as its number
        squares: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for i, name in enumerate(self._names):
            w = cast(float, host.get(w_slot[i]))  # every parameter has a norm
            g, w_prev = host.get(g_slot[i]), host.get(before_slot[i])
            pred = predictions[self._group_index[i]]
            t = f"tensor/{name}/"
            record[t + "weight_norm"] = w
            record[t + "weight_linf"] = host.get(linf_slot[i])
            record[t + "norm_ratio"] = stats.ratio(w, self._initial[i])
            if range_slots[i] is not None:
                lo, mean, hi = host.get_all(range_slots[i])
                record.update({t + "weight_min": lo, t + "weight_mean": mean, t + "weight_max": hi})
            record[t + "grad_norm"] = g
            record[t + "grad_weight_ratio"] = stats.ratio(g, w)
            record[t + "update_weight_ratio"] = stats.ratio(host.get(upd_slot[i]), w_prev)
            ga = wa = None
            if weighted_slots[i] is not None:
                ga, wa = host.get_all(weighted_slots[i])
                record[t + "adam_grad_weight_ratio"] = stats.ratio(ga, wa)
            record[t + "pred_ratio"] = pred.ratio
            record[t + "pred_linf"] = pred.linf
            target = targets[i]
            if target is not None:
                record[t + "target_norm"] = target
                record[t + "norm_deviation"] = w / target - 1 if target > 0 else None
            for scope in (
                f"layer/{name.rpartition('.')[0] or name}",
                f"group/{self._labels[self._group_index[i]]}",
                "global",
            ):
                squares[scope]["w2"].append(w * w)
                squares[scope]["g2"].append(g * g if g is not None else 0.0)
                squares[scope]["i2"].append(self._initial[i] ** 2)
                if weighted_slots[i] is not None and ga is not None and wa is not None:
                    squares[scope]["ga2"].append(ga * ga)
                    squares[scope]["wa2"].append(wa * wa)
        record |= _scope_entries(squares)
        if captured is not None:
            stepped = host.get_all(stepped_slot)
            record["global/clipped_grad_norm"] = math.sqrt(sum(v * v for v in stepped if v is not None))
        for gi, label in enumerate(self._labels):
            record[f"group/{label}/pred_ratio"] = predictions[gi].ratio
            record[f"group/{label}/pred_linf"] = predictions[gi].linf
            if gi in update_slots:
                decay, size_slots, dot_slots, before_norm_slots = update_slots[gi]
                lr = as_number(groups[gi]["lr"])
                size = math.sqrt(sum(v * v for v in host.get_all(size_slots) if v))
                before_norm = math.sqrt(sum(v * v for v in host.get_all(before_norm_slots) if v))
                record[f"group/{label}/weight_decay"] = decay
                record[f"group/{label}/update_size"] = size / lr
                # cos(θ_{t−1}, −γu): > 0 where the update points outward and grows the norm
                outward = sum(v for v in host.get_all(dot_slots) if v)
                record[f"group/{label}/update_cosine"] = stats.ratio(outward, size * before_norm)
        return record

    def _enqueue_update_sizes(
        self, params: list[Tensor], before: list[Tensor], enqueue
    ) -> dict[int, tuple[float, list[int | None], list[int | None], list[int | None]]]:
        """Per group with decoupled decay (AdamW, AdamC, AdamWN's uncontrolled groups, Muon), its
        effective λ_t and the slots, per tensor, of ‖f·θ_{t−1} − θ_t‖ (f = 1 − γ_t·λ_t: the update
        γ_t·u without the decay, as ``target="auto"`` measures it), of ⟨θ_{t−1}, θ_t − f·θ_{t−1}⟩
        and of ‖θ_{t−1}‖, for :mod:`.forecast`."""
        out: dict[int, tuple[float, list[int | None], list[int | None], list[int | None]]] = {}
        for gi, group in enumerate(self.optimizer.param_groups):
            lr = as_number(group.get("lr", 0.0))
            if not lr > 0 or stats.predict(self.optimizer, group).family not in ("adam", "muon"):
                continue
            decay = stats.effective_weight_decay(self.optimizer, group)
            idx = [i for i, g in enumerate(self._group_index) if g == gi]
            if not idx:
                continue
            olds = [before[i] for i in idx]
            steps = torch._foreach_sub([params[i] for i in idx], torch._foreach_mul(olds, 1 - lr * decay))
            dots = [(local(old).float() * local(step).float()).sum() for old, step in zip(olds, steps)]
            dots = reduce_across_shards(dots, olds, "sum")
            out[gi] = (decay, enqueue(tensor_norms(steps)), enqueue(dots), enqueue(tensor_norms(olds)))
        return out

    def _enqueue_weighted_norms(self, params: list[Tensor], enqueue) -> list[list[int | None] | None]:
        slots: list[list[int | None] | None] = [None] * len(params)
        if not self.weighted_norms:
            return slots
        for gi, group in enumerate(self.optimizer.param_groups):
            if "betas" not in group or stats.predict(self.optimizer, group).family != "adam":
                continue
            idx = [i for i, g in enumerate(self._group_index) if g == gi]
            pairs = stats.weighted_adam_norms(
                [params[i] for i in idx],
                [self._params[i].grad for i in idx],
                [self.optimizer.state.get(self._params[i], {}) for i in idx],
                beta2=group["betas"][1],
                eps=group.get("eps", 1e-8),
            )
            for i, pair in zip(idx, pairs):
                slots[i] = enqueue(pair) if pair is not None else None
        return slots

    def _adamwn_targets(self) -> list[float | None]:
        if not isinstance(self.optimizer, AdamWN):
            return [None] * len(self._params)
        out: list[float | None] = []
        for group in self.optimizer.param_groups:
            out.extend(stats.adamwn_target_norms(self.optimizer, group, group["params"]))
        return out


def _scope_entries(squares: dict[str, dict[str, list[float]]]) -> dict[str, float | None]:
    """Each layer's, group's and the global norms from their tensors' squared norms (``w2``
    weights, ``g2`` gradients, ``i2`` initial weights): norm, gradient norm, their ratio, and the
    ratio to the initial norm."""
    entries: dict[str, float | None] = {}
    for scope, parts in squares.items():
        w, g, init = (math.sqrt(sum(parts[k])) for k in ("w2", "g2", "i2"))
        entries[f"{scope}/weight_norm"] = w
        entries[f"{scope}/grad_norm"] = g
        entries[f"{scope}/grad_weight_ratio"] = stats.ratio(g, w)
        entries[f"{scope}/norm_ratio"] = stats.ratio(w, init)
        if parts.get("wa2"):  # Adam's A-weighted ratio, which its pred_ratio predicts
            weighted = math.sqrt(sum(parts["ga2"])), math.sqrt(sum(parts["wa2"]))
            entries[f"{scope}/adam_grad_weight_ratio"] = stats.ratio(*weighted)
    return entries


class _OneTransfer:
    """Scalar tensors queued during a measurement, then read to the host together: one stack
    and transfer per (device, dtype) instead of a synchronising ``.item()`` each."""

    def __init__(self) -> None:
        self._queue: list[Tensor] = []
        self._values: list[float] = []

    def add(self, tensors: Sequence[Tensor | None]) -> list[int | None]:
        """Queue ``tensors``; returns their slots (None for a None) to read after :meth:`transfer`."""
        slots: list[int | None] = []
        for t in tensors:
            slots.append(None if t is None else len(self._queue))
            if t is not None:
                self._queue.append(t)
        return slots

    def transfer(self) -> None:
        self._values = _to_floats(self._queue)

    def get(self, slot: int | None) -> float | None:
        return None if slot is None else self._values[slot]

    def get_all(self, slots: list[int | None] | None) -> list[float | None]:
        return [self.get(s) for s in slots] if slots is not None else []


def _to_floats(tensors: list[Tensor]) -> list[float]:
    """0-d tensors to Python floats with one stack and transfer per (device, dtype) bucket."""
    values: list[float] = [0.0] * len(tensors)
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    for indices in buckets.values():
        stacked = torch.stack([tensors[i] for i in indices]).tolist()
        for i, v in zip(indices, stacked):
            values[i] = v
    return values
