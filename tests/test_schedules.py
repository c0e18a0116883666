import math
import pickle

import pytest
import torch

from normctl import schedules


def test_values():
    ramp = schedules.linear_ramp(1.0, 2.415, 2500)
    assert ramp(0) == 1.0 and ramp(1250) == pytest.approx(1.7075) and ramp(10**6) == 2.415
    cos = schedules.cosine(1.0, 0.1, 100, warmup=10)
    assert cos(0) == 0.0 and cos(5) == 0.5 and cos(10) == 1.0
    assert cos(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(100) == pytest.approx(0.1) and cos(500) == 0.1
    assert max(cos(t) for t in range(200)) == 1.0
    pw = schedules.piecewise_linear([(10, 1.0), (20, 3.0)])
    assert (pw(0), pw(15), pw(30)) == (1.0, 2.0, 3.0)
    assert schedules.constant(0.3)(123) == 0.3
    assert schedules.target_from_adamw(2.415, 2500) == ramp


def test_schedules_pickle_and_drive_lambda_lr():
    for s in (
        schedules.linear_ramp(1, 2, 5),
        schedules.cosine(1, 0, 10, warmup=2),
        schedules.piecewise_linear([(0, 1), (3, 2)]),
        schedules.constant(1.0),
    ):
        assert pickle.loads(pickle.dumps(s)) == s
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedules.cosine(1.0, 0.0, 10, warmup=2))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [0.0, 0.25, 0.5]


def test_as_schedule():
    assert schedules.as_schedule(2, "x")(7) == 2.0
    with pytest.raises(TypeError, match="x must be a float or a callable"):
        schedules.as_schedule(True, "x")


def test_piecewise_linear_at_its_knots_and_between_them():
    pw = schedules.piecewise_linear([(0, 0.0), (10, 1.0), (20, 0.5)])
    assert [pw(t) for t in (-1, 0, 5, 10, 15, 20, 21)] == [0.0, 0.0, 0.5, 1.0, 0.75, 0.5, 0.5]


def test_a_lambda_lr_is_read_as_a_normctl_schedule_that_loads_weights_only(tmp_path):
    """from_lr_scheduler: a LambdaLR's multiplier at every step within its tolerance, the warm-up's
    corner included, through far fewer knots than steps; an AutoTarget holding it
    round-trips torch.load(weights_only=True); other schedulers are not read."""
    from normctl import AutoTarget

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    multiplier = lambda t: min(1.0, t / 50) * 0.5 * (1 + math.cos(math.pi * t / 5000))  # noqa: E731 (a user's lambda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
    short = schedules.from_lr_scheduler(scheduler, 300)
    assert max(abs(short(t) - multiplier(t)) for t in range(300)) < 2e-4
    long = schedules.from_lr_scheduler(scheduler, 5000)
    assert max(abs(long(t) - multiplier(t)) for t in range(5000)) < 2e-4 and len(long.knots) < 1000
    assert long(4999) == multiplier(4999)  # the last step is a knot
    target = AutoTarget(total_steps=5000, lr_schedule=long)
    torch.save({"target": target}, tmp_path / "t.pt")
    assert torch.load(tmp_path / "t.pt", weights_only=True)["target"] == target
    assert schedules.from_lr_scheduler(torch.optim.lr_scheduler.StepLR(opt, 10), 100) is None
    assert schedules.from_lr_scheduler(None, 100) is None and schedules.from_lr_scheduler(scheduler, 0) is None
