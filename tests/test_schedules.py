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
