"""Fused paths (torch's one-pass kernels with the decay folded in) against the reference."""

import warnings

import pytest
import torch
from helpers import DEVICES, assert_same, make_params, run, state_tensors, warmup_cosine

from normctl import SGDC, AdamC, AdamWN, rules, schedules
from normctl.optim import _one_pass, _one_pass_cpu


def compare_with_reference(make, *, dtype=torch.float64, rtol=1e-6, device="cpu"):
    """100 steps under warm-up + cosine: fused vs the per-tensor loop, params and state."""
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kw in (dict(foreach=False), dict(fused=True)):
            params, opt = run(
                lambda p: make(p, **kw),
                scheduler=warmup_cosine(),
                dtype=dtype,
                shapes=[(5, 3), (4,), (2, 3, 4), (7, 7)],
                device=device,
            )
            results.append((params, state_tensors(opt)))
    (p_ref, s_ref), (p_fused, s_fused) = results
    assert_same(p_ref, p_fused, exact=False, rtol=rtol, atol=1e-7)
    assert_same(s_ref, s_fused, exact=False, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kw",
    [
        dict(target=1.3, rate=0.1),
        dict(target=schedules.linear_ramp(1.0, 0.6, 30), rate=0.5, scope="group"),
        dict(target=1.2, rate=0.2, scope="global"),
        dict(target=1.5, rate=1.0, control_at="post_step"),
        dict(target=0.0, rate=0.1, rate_scaling="lr"),
    ],
    ids=["tensor", "group", "global", "post-step", "13a"],
)
def test_adamwn_fused_equals_reference(kw, dtype, device):
    compare_with_reference(
        lambda p, **o: AdamWN(p, lr=1e-2, **kw, **o),
        dtype=dtype,
        # float32 CUDA kernels contract to fused multiply-adds: ~1e-5 apart after 100 steps
        rtol=1e-6 if dtype == torch.float64 else (1e-5 if device == "cpu" else 5e-5),
        device=device,
    )


def test_adamwn_fused_uncontrolled_groups_with_decay():
    compare_with_reference(
        lambda p, **o: AdamWN(
            [{"params": p[:2], "control": False, "weight_decay": 0.1}, {"params": p[2:]}], lr=1e-2, target=2.0, **o
        )
    )


@pytest.mark.parametrize("device", DEVICES)
def test_adamc_fused_equals_reference_and_torch_fused_adamw_at_constant_lr(device):
    compare_with_reference(
        lambda p, **o: AdamC(
            [{"params": p[:2], "normalized": True}, {"params": p[2:]}], lr=1e-2, weight_decay=0.1, **o
        ),
        device=device,
    )
    ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True), device=device)
    got, _ = run(lambda p: AdamC(p, lr=1e-2, weight_decay=0.1, normalized=True, fused=True), device=device)
    assert_same(ref, got)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "momentum,dampening,nesterov,decoupled",
    [(0.0, 0.0, False, False), (0.9, 0.0, False, False), (0.9, 0.0, True, False), (0.8, 0.2, False, True)],
)
def test_sgdc_fused_equals_reference_and_torch_fused_sgd(momentum, dampening, nesterov, decoupled, device):
    kw = dict(lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=1e-2)
    compare_with_reference(
        lambda p, **o: SGDC(p, normalized=True, decoupled_weight_decay=decoupled, **kw, **o), device=device
    )
    if not decoupled:
        ref, _ = run(lambda p: torch.optim.SGD(p, fused=True, **kw), device=device)
        got, _ = run(lambda p: SGDC(p, normalized=True, fused=True, **kw), device=device)
        assert_same(ref, got)


def test_params_gaining_grads_later_get_fresh_momentum_buffers():
    a, b = make_params(shapes=[(3,), (3,)])
    runs = []
    for kw in (dict(foreach=False), dict(fused=True)):
        x, y = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        opt = SGDC([x, y], lr=0.1, momentum=0.9, normalized=True, **kw)
        for step in range(4):
            x.grad = torch.full((3,), 1.0 + step, dtype=torch.float64)
            y.grad = torch.full((3,), 2.0, dtype=torch.float64) if step >= 2 else None
            opt.step()
        runs.append((x.detach(), y.detach()))
    assert_same(list(runs[0]), list(runs[1]), exact=False, rtol=1e-12, atol=0)


def test_default_selects_fused_on_cpu_and_explicit_paths_override(monkeypatch):
    calls = []
    original = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: (calls.append(1), original(*a, **k)))
    for make, expected in (
        (lambda p: AdamWN(p, lr=1e-2), True),
        (lambda p: AdamC(p, normalized=True), True),
        (lambda p: AdamWN(p, lr=1e-2, foreach=True), False),
        (lambda p: AdamWN(p, lr=1e-2, fused=False), False),
        (lambda p: AdamC(p, normalized=True, decay="l1"), False),
    ):
        calls.clear()
        run(make, steps=1)
        assert bool(calls) == expected
    with pytest.raises(ValueError, match="foreach and fused cannot both be True"):
        AdamWN(make_params(), foreach=True, fused=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kw",
    [
        dict(target=1.3, rate=0.1),
        dict(target=2.0, rate=0.2, relative_target=False),
        dict(target=1.2, rate=0.3, scope="group"),
        dict(target=1.2, rate=0.3, scope="global"),
    ],
    ids=["tensor", "absolute", "group", "global"],
)
def test_one_pass_kernel_equals_reference_and_notices_changed_weights(kw, device):
    """The kernel keeps ‖θ‖ from its own writes; an in-place change between steps (here a
    rescale) must make it measure the norms again."""
    if not (_one_pass.available(device) or (device == "cpu" and _one_pass_cpu.kernel() is not None)):
        pytest.skip(f"no one-pass kernel on {device} here (CUDA needs Triton, the CPU a C++ compiler)")
    runs = reference_and_default(
        lambda params, **path: AdamWN(params, lr=1e-2, **kw, **path),
        [(5, 3), (4,), (), (7, 7), (40000,)],
        steps=60,
        rescale_at=20,
        device=device,
    )
    assert took_one_pass(runs[1][1]) and not took_one_pass(runs[0][1])  # the default took the kernel
    assert_paths_agree(runs)


def reference_and_default(make, shapes, *, steps, rescale_at=None, skip=lambda step, i: False, device="cpu"):
    """Train the reference path (``foreach=False``) and the default path of ``make(params,
    **path)`` on the same float32 gradients. ``skip(step, i)`` leaves tensor i without a
    gradient at that step; after step ``rescale_at`` the first weight is tripled in place.
    Returns [(params, optimizer)] for the two paths."""
    runs = []
    for path in (dict(foreach=False), dict()):
        params = make_params(torch.float32, shapes=shapes, device=device)
        optimizer = make(params, **path)
        g = torch.Generator().manual_seed(3)
        for step in range(steps):
            for i, p in enumerate(params):
                p.grad = None if skip(step, i) else torch.randn(p.shape, generator=g).to(device)
            optimizer.step()
            if step == rescale_at:
                with torch.no_grad():
                    params[0].mul_(3.0)
        runs.append((params, optimizer))
    return runs


def assert_paths_agree(runs):
    (reference, ref_opt), (default, opt) = runs
    assert_same(reference, default, exact=False, rtol=1e-5, atol=1e-6)
    assert_same(state_tensors(ref_opt), state_tensors(opt), exact=False, rtol=1e-5, atol=1e-6)


def took_one_pass(optimizer: AdamWN) -> bool:
    return bool(optimizer._kept_tables or optimizer._kept_norms._entries)


def cpu_kernel_or_skip():
    if _one_pass_cpu.kernel() is None:
        pytest.skip("the one-pass CPU kernel could not be built here (no C++ compiler or ninja)")


def test_cpu_kernel_norms_do_not_depend_on_the_thread_count():
    """Per-chunk sums added in a fixed order: 1 thread and 2 threads give the same bits."""
    cpu_kernel_or_skip()
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            params = make_params(torch.float32, shapes=[(300, 700), (5,), (70000,)])
            optimizer = AdamWN(params, lr=1e-2, target=0.8, rate=0.3)
            g = torch.Generator().manual_seed(5)
            for _ in range(5):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=g)
                optimizer.step()
            results.append((params, optimizer._kept_norms.tensor_norms(params)))
    finally:
        torch.set_num_threads(threads)
    assert_same(results[0][0], results[1][0])
    assert_same(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_first_elements_are_each_tensors_first_element(dtype):
    """What the kept norms compare to see writes through .data, read in one C++ call."""
    cpu_kernel_or_skip()
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=g).to(dtype) for s in [(3, 4), (0,), (7,)]]
    tensors.append(torch.randn(10, generator=g).to(dtype)[3:])  # a view starting inside its storage
    expected = torch.tensor([float(t.view(-1)[0]) if t.numel() else 0.0 for t in tensors])
    assert torch.equal(_one_pass_cpu.first_elements(tensors), expected)
    assert _one_pass_cpu.first_elements([tensors[0], tensors[2].double()]) is None  # mixed dtypes: not taken


def test_the_kernels_suitability_test_agrees_with_pythons(monkeypatch):
    """suit_one_pass asks the C++ kernel where it is loaded; both answers agree on every case."""
    cpu_kernel_or_skip()
    from normctl.optim._adam import suit_one_pass

    def case(params, states, starts=None):
        fast = suit_one_pass(params, states, starts=starts)
        with monkeypatch.context() as patched:
            patched.setitem(_one_pass_cpu._state, "extension", None)
            slow = suit_one_pass(params, states, starts=starts)
        assert fast == slow
        return fast

    def adam(p, dtype=None):
        return {"exp_avg": torch.zeros_like(p, dtype=dtype), "exp_avg_sq": torch.zeros_like(p, dtype=dtype)}

    params = [torch.randn(3, 4), torch.randn(5)]
    assert case(params, [adam(p) for p in params])
    assert not case([params[0].t(), params[1]], [adam(p) for p in params])  # a transposed weight
    assert not case(params, [adam(params[0]), adam(params[1], torch.float64)])  # state of another dtype
    assert not case(params, [adam(params[0]), {}])  # a state yet to be made...
    assert case(params, [adam(params[0]), {}], starts=[False, True])  # ...which the kernel is about to make
    assert not case([params[0], params[1].bfloat16()], [adam(p) for p in params])


def test_bfloat16_cpu_norms_are_summed_in_float32_by_the_kernel(monkeypatch):
    """The kernel's norms of bfloat16 tensors match torch's float32-accumulated ones to float32
    rounding (torch's own bfloat16 norm is 2e-3 off), whatever the thread count."""
    cpu_kernel_or_skip()
    g = torch.Generator().manual_seed(0)
    tensors = [(torch.randn(s, generator=g) * 0.02).bfloat16() for s in [(300, 700), (5,), (0,), (70000,)]]
    exact = torch.stack([t.double().norm() for t in tensors])
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.stack(rules.tensor_norms(tensors)))
    finally:
        torch.set_num_threads(threads)
    assert_same([results[0]], [results[1]])
    assert results[0].dtype == torch.float32
    torch.testing.assert_close(results[0].double(), exact, rtol=1e-5, atol=0)
    monkeypatch.setattr(_one_pass_cpu, "kernel", lambda: None)  # torch's float32 copy and norm
    torch.testing.assert_close(torch.stack(rules.tensor_norms(tensors)), results[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["tensor", "group"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_kernel_equals_torch_fused_adamw_path_it_replaces(dtype, scope, device, monkeypatch):
    """Without the kernel AdamWN falls back to torch's fused AdamW plus a norm pass; both
    compute bfloat16 in float32 and round on store, so they agree to one bfloat16 ulp."""
    if device == "cpu":
        cpu_kernel_or_skip()
    elif not _one_pass.available(device):
        pytest.skip("the one-pass CUDA kernel needs Triton")
    runs = []
    for available in (True, False):
        if not available:
            monkeypatch.setattr(_one_pass_cpu, "kernel", lambda: None)
            monkeypatch.setattr(_one_pass, "available", lambda device_type="cuda": False)
        params, optimizer = run(
            lambda p: AdamWN(p, lr=1e-2, target=1.4, rate=0.2, scope=scope), dtype=dtype, steps=30, device=device
        )
        assert took_one_pass(optimizer) == available
        runs.append((params, state_tensors(optimizer)))
    tolerance = (
        dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-6)
    )  # one bfloat16 ulp
    assert_same(runs[0][0], runs[1][0], exact=False, **tolerance)
    assert_same(runs[0][1], runs[1][1], exact=False, **tolerance)


def test_kept_norms_are_measured_again_after_load_state_dict():
    """Loading a checkpoint rewrites the weights in place: the kernel's norms must not be reused."""
    cpu_kernel_or_skip()
    params = make_params(torch.float32, shapes=[(6, 4), (9,)])
    optimizer = AdamWN(params, lr=1e-2, target=1.0, rate=0.5)
    model = torch.nn.ParameterList(params)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.step()
    model.load_state_dict(saved)
    kept = optimizer._kept_norms.tensor_norms(params)
    assert_same(kept, [torch.linalg.vector_norm(p) for p in params])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["group", "global"])
def test_one_pass_scope_norm_counts_tensors_without_a_gradient(scope, device):
    """Group/global scope: ‖θ‖ spans every tensor of the scope, also one that has no gradient
    this step (so the one-pass step's kept norms alone do not cover it)."""
    runs = reference_and_default(
        lambda params, **path: AdamWN(
            [{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, target=1.2, rate=0.3, scope=scope, **path
        ),
        [(5, 3), (4,), (7, 7), (300,)],
        steps=30,
        skip=lambda step, i: i == 1 and step % 3 == 0 or i == 3 and step % 4 == 1,
        device=device,
    )
    assert_paths_agree(runs)


class FakeKernel:
    """The Triton kernel's arithmetic in torch, reached through the same pointer tables: lets
    the CUDA step's bookkeeping (tables, kept norms, scope norms, invalidation) run on the CPU."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def __getitem__(self, grid):
        return self.launch

    def launch(self, p_ptrs, g_ptrs, m_ptrs, v_ptrs, numels, block_tensor, block_start, base, steps, norm_sq,
               next_norm_sq, target_scale, rate, lr, beta1, beta2, eps, *, ONE_NORM, **_):  # fmt: skip
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        states = [s for s in self.optimizer.state.values() if s]
        known = [*params, *[p.grad for p in params if p.grad is not None]]
        known += [s[key] for s in states for key in ("exp_avg", "exp_avg_sq")]
        tensors = {t.data_ptr(): t for t in known}  # the kernel finds its tensors by address
        for t in sorted(set(block_tensor.tolist())):
            p, g, m, v = (tensors[int(table[t])] for table in (p_ptrs, g_ptrs, m_ptrs, v_ptrs))
            norm = norm_sq.sqrt() if ONE_NORM else norm_sq[t].sqrt()  # ONE_NORM: a 0-d scope norm²
            ratio = target_scale / norm if ONE_NORM else target_scale * base[t] / norm
            ratio = ratio if torch.isfinite(ratio) else torch.ones(())
            step = steps[t]
            p.mul_(1 - rate * (1 - ratio))
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt() / (1 - beta2**step).sqrt() + eps
            p.sub_(lr / (1 - beta1**step) * m / denom)
            next_norm_sq[t] += p.square().sum()


@pytest.mark.parametrize("scope", ["tensor", "group", "global"])
def test_cuda_step_bookkeeping_with_the_kernel_in_torch(scope, monkeypatch):
    """The CUDA one-pass step's host side on the CPU: tables built once and rebuilt when a
    weight changes in place or gets a gradient at a new address, kept norms, scope norms with
    a tensor that has no gradient — against the reference path."""
    import types

    monkeypatch.setattr(_one_pass, "available", lambda device_type="cuda": True)
    monkeypatch.setattr(_one_pass, "tl", types.SimpleNamespace(float32="f32", bfloat16="bf16"), raising=False)
    monkeypatch.setattr(_one_pass_cpu, "eligible", lambda *a: False)

    def make(params, **path):
        optimizer = AdamWN(
            [{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, target=1.2, rate=0.3, scope=scope, **path
        )
        monkeypatch.setattr(_one_pass, "_adamwn_kernel", FakeKernel(optimizer), raising=False)
        return optimizer

    runs = reference_and_default(
        make,
        [(5, 3), (4,), (7, 7), (30,)],
        steps=12,
        rescale_at=5,
        skip=lambda step, i: scope != "tensor" and i == 3 and step % 4 == 1,
    )
    assert runs[1][1]._kept_tables and not runs[0][1]._kept_tables
    assert_paths_agree(runs)
