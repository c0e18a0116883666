"""``normctl-lab plain-call``: which calls each task trains, each a valid run configuration."""

from __future__ import annotations

import pytest
from normctl_lab.config import RunConfig, with_overrides
from normctl_lab.plain_call import REFERENCE, TASKS, calls


@pytest.mark.parametrize("task", list(TASKS))
def test_every_call_of_every_task_is_a_run_the_lab_accepts(task):
    for call, settings in calls(task).items():
        cfg = with_overrides(RunConfig(), [*TASKS[task], "plain=true", *settings])
        assert cfg.task == task and REFERENCE[call] in calls(task)  # its reference is trained beside it


def test_the_output_layer_choice_only_where_the_model_has_its_own_and_sgd_only_where_sgdc_corrects():
    assert "adamwn-groups-decay-head" in calls("voronoi") and "adamwn-groups-decay-head" in calls("torchlm")
    assert "adamwn-groups" not in calls("gpt")  # its output layer is the tied embedding
    assert "sgdc" in calls("fmnist") and "sgdc" not in calls("voronoi")  # no normalised layer to correct
    assert all("muon" in calls(task) for task in TASKS)
