"""The retrain decision: triggers, cool-down, the training window, and windows too poor to train on."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from prefect_mlops.blocks import RetrainPolicy, TrainingWindow
from prefect_mlops.refs import DatasetRef, ModelRef
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import Champion, Lineage, TrainerSpec
from prefect_mlops.tasks.performance import PerformanceReport
from prefect_mlops.tasks.retrain import decide_retraining, monitoring_window, why_untrainable

SPEC = FeatureSpec(target="y", numeric=["x"])
APRIL = "2024-04-01/2024-05-01"


def champion(trained_on: str | None = "2023-10-01/2024-01-01") -> Champion:
    data = DatasetRef(name="m", uri="unused", fingerprint="f" * 64, rows=100, columns={"x": "float64"},
                      window=trained_on)
    lineage = Lineage(model_name="m", dataset=data, features=SPEC, trainer=TrainerSpec(), params_digest="d")
    return Champion(model=ModelRef(name="m", version="1", run_id="r", source="s"), lineage=lineage)


def performance(decision: str, rows: int = 300, window: str = APRIL) -> PerformanceReport:
    return PerformanceReport(model_name="m", champion_version="1", window=window, decision=decision,
                             reason=f"roc_auc says {decision}", primary_metric="roc_auc", rows=rows)


def test_a_degraded_champion_triggers_on_the_policys_window_not_the_event_window():
    decision = decide_retraining(model_name="m", champion=champion(), window=APRIL, policy=RetrainPolicy(),
                                 performance=performance("degraded"))
    assert decision.retrain and decision.trigger == "performance"
    assert decision.training_window == "2024-02-01T00:00:00/2024-05-01T00:00:00"  # three 30-day periods back
    assert decision.champion_degraded == "roc_auc says degraded"


def test_a_change_shown_by_enough_rows_is_learned_from_the_degraded_window_alone():
    decision = decide_retraining(model_name="m", champion=champion(), window=APRIL,
                                 policy=RetrainPolicy(change_rows=500), performance=performance("degraded", rows=800))
    assert decision.training_window == "2024-04-01T00:00:00/2024-05-01T00:00:00"
    assert any("the degraded window alone (800 labelled rows" in r for r in decision.reasons)
    # A widened window (a small stream) is the one that showed the change: learn from all of it.
    widened = decide_retraining(model_name="m", champion=champion(), window=APRIL,
                                policy=RetrainPolicy(change_rows=500),
                                performance=performance("degraded", rows=600, window="2024-02-01/2024-05-01"))
    assert widened.training_window == "2024-02-01T00:00:00/2024-05-01T00:00:00"
    drift_only = decide_retraining(model_name="m", champion=champion(), window=APRIL,
                                   policy=RetrainPolicy(change_rows=None), performance=performance("degraded", 800))
    assert drift_only.training_window == "2024-02-01T00:00:00/2024-05-01T00:00:00"


def test_no_signal_no_retraining_and_a_trigger_left_out_of_the_policy_does_not_fire():
    assert not decide_retraining(model_name="m", champion=champion(), window=APRIL, policy=RetrainPolicy(),
                                 performance=performance("ok")).retrain
    decision = decide_retraining(model_name="m", champion=champion(), window=APRIL,
                                 policy=RetrainPolicy(triggers=["drift"]), performance=performance("degraded"))
    assert not decision.retrain and decision.trigger is None


def test_cool_down_holds_a_second_retraining_back_for_whole_periods():
    policy = RetrainPolicy(cooldown_periods=2)
    held = decide_retraining(model_name="m", champion=champion(), window=APRIL, policy=policy,
                             performance=performance("degraded"), retrained_through=datetime(2024, 3, 15))
    assert not held.retrain and any("cool-down" in r for r in held.reasons)
    later = decide_retraining(model_name="m", champion=champion(), window="2024-06-01/2024-07-01", policy=policy,
                              performance=performance("degraded"), retrained_through=datetime(2024, 4, 1))
    assert later.retrain
    # Whole windows, whatever the months' lengths: July+August (62 days) is still two windows.
    held = decide_retraining(model_name="m", champion=champion(), window="2024-08-01/2024-09-01", policy=policy,
                             performance=performance("degraded"), retrained_through=datetime(2024, 7, 1))
    assert not held.retrain
    assert decide_retraining(model_name="m", champion=champion(), window="2024-09-01/2024-10-01", policy=policy,
                             performance=performance("degraded"), retrained_through=datetime(2024, 7, 1)).retrain
    assert decide_retraining(model_name="m", champion=champion(), window=APRIL,
                             policy=RetrainPolicy(cooldown_periods=0), performance=performance("degraded"),
                             retrained_through=datetime(2024, 3, 31)).retrain
    # The champion's own training (a person's run) starts no cool-down.
    assert decide_retraining(model_name="m", champion=champion("2024-01-01/2024-04-01"), window=APRIL,
                             policy=policy, performance=performance("degraded")).retrain


def test_schedule_retrains_an_old_champion_whatever_the_signals():
    policy = RetrainPolicy(triggers=["schedule"], max_model_age=timedelta(days=60))
    decision = decide_retraining(model_name="m", champion=champion(), window=APRIL, policy=policy,
                                 performance=performance("ok"))
    assert decision.retrain and decision.trigger == "schedule"
    young = decide_retraining(model_name="m", champion=champion("2024-01-01/2024-04-01"), window=APRIL,
                              policy=policy)
    assert not young.retrain


@pytest.mark.parametrize(("window", "start", "end", "cap"), [
    (TrainingWindow(kind="periods", periods=2), datetime(2024, 3, 2), datetime(2024, 5, 1), None),
    (TrainingWindow(kind="duration", duration=timedelta(days=10)), datetime(2024, 4, 21), datetime(2024, 5, 1),
     None),
    (TrainingWindow(kind="rows", rows=500), None, datetime(2024, 5, 1), 500),
    (TrainingWindow(kind="expanding", max_rows=9000), None, datetime(2024, 5, 1), 9000),
])
def test_training_window_kinds(window, start, end, cap):
    assert window.span(datetime(2024, 4, 1), datetime(2024, 5, 1)) == (start, end)
    assert window.row_cap() == cap


def test_training_window_needs_its_size():
    with pytest.raises(ValueError, match="kind 'rows' needs the number of rows"):
        TrainingWindow(kind="rows")
    with pytest.raises(ValueError, match=r"unknown key 'triger' \(did you mean 'triggers'"):
        RetrainPolicy(triger=["drift"])


def test_one_class_and_tiny_windows_are_named_not_crashed(workspace):
    one_class = workspace.write_snapshot(pd.DataFrame({"x": range(50), "y": [1] * 50}), name="m")
    assert "one class of 'y' (1)" in why_untrainable(one_class, SPEC, min_rows=10)
    tiny = workspace.write_snapshot(pd.DataFrame({"x": range(5), "y": [0, 1] * 2 + [0]}), name="m")
    assert "holds 5 rows, fewer than the retrain policy's min_training_rows 10" in why_untrainable(
        tiny, SPEC, min_rows=10)
    fine = workspace.write_snapshot(pd.DataFrame({"x": range(50), "y": [0, 1] * 25}), name="m")
    assert why_untrainable(fine, SPEC, min_rows=10) is None
    regression = FeatureSpec(target="y", numeric=["x"], task="regression")
    assert why_untrainable(one_class, regression, min_rows=10) is None


def test_a_window_too_small_to_judge_widens_to_every_row_the_champion_has_not_seen():
    policy = RetrainPolicy(min_rows=100)
    assert monitoring_window(APRIL, champion("2023-10-01/2024-01-01"), 40, policy=policy) == \
        "2024-01-01T00:00:00/2024-05-01T00:00:00"
    assert monitoring_window(APRIL, champion(), 100, policy=policy) is None  # big enough
    assert monitoring_window(APRIL, champion("2024-01-01/2024-04-15"), 40, policy=policy) is None  # overlaps
    assert monitoring_window(None, champion(), 40, policy=policy) is None  # 'latest' is every row already
