"""quality-gate: floors, the margin against the champion, min gain, slices, first run, NaN."""

from __future__ import annotations

import math

import pytest

from prefect_mlops.blocks import ModelPolicy
from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks.evaluate import Evaluation, Scores
from prefect_mlops.tasks.gate import judge, quality_gate


def evaluation(challenger: dict, champion: dict | None = None, slices: dict | None = None,
               task: str = "classification", metric: str = "roc_auc") -> Evaluation:
    slices = slices or {}
    return Evaluation(
        model_name="m", task=task, primary_metric=metric, holdout_rows=1000,
        challenger=Scores(role="challenger", run_id="run-c", overall=challenger, slices=slices,
                          slice_rows={k: 100 for k in slices}),
        champion=Scores(role="champion", version="3", run_id="run-p", overall=champion) if champion else None,
        smoke_sample_uri="unused")


GOOD = {"accuracy": 0.8, "f1": 0.7, "roc_auc": 0.85, "log_loss": 0.4}


def test_first_run_promotes_when_floors_pass_and_records_every_rule():
    verdict = judge(evaluation(GOOD), ModelPolicy(floors={"roc_auc": 0.8, "log_loss": 0.5}))
    assert verdict.passed
    assert [r.rule for r in verdict.rules] == ["floor", "floor", "first-run"]
    assert "log_loss=0.4000 meets the ceiling 0.5000" in verdict.reasons


def test_first_run_policy_reject_waits_for_a_person():
    verdict = judge(evaluation(GOOD), ModelPolicy(first_run="reject"))
    assert not verdict.passed and "a person must promote" in verdict.main_reason


def test_challenger_worse_than_champion_by_more_than_delta_is_rejected():
    verdict = judge(evaluation({**GOOD, "roc_auc": 0.83}, {**GOOD, "roc_auc": 0.85}), ModelPolicy(max_drop=0.01))
    assert not verdict.passed
    assert "worse by 0.0200, allowed drop 0.0100" in verdict.main_reason
    assert verdict.champion_version == "3"


def test_within_delta_passes_but_min_gain_can_still_reject():
    eva = evaluation({**GOOD, "roc_auc": 0.845}, {**GOOD, "roc_auc": 0.85})
    assert judge(eva, ModelPolicy(max_drop=0.01)).passed
    verdict = judge(eva, ModelPolicy(max_drop=0.01, min_gain=0.01))
    assert not verdict.passed and "required 0.0100" in verdict.main_reason


def test_lower_is_better_metrics_use_ceilings_and_reverse_the_margin():
    eva = evaluation({"rmse": 1.2, "mae": 0.9, "r2": 0.5}, {"rmse": 1.0, "mae": 0.8, "r2": 0.6},
                     task="regression", metric="rmse")
    verdict = judge(eva, ModelPolicy(floors={"rmse": 1.5}, max_drop=0.1))
    assert [r.passed for r in verdict.rules] == [True, False]
    assert "rmse 1.2000 vs champion v3 1.0000: worse by 0.2000" in verdict.main_reason


def test_slice_floors_judge_each_slice():
    eva = evaluation(GOOD, slices={"north": {**GOOD, "roc_auc": 0.9}, "south": {**GOOD, "roc_auc": 0.55}})
    verdict = judge(eva, ModelPolicy(slice_floors={"roc_auc": 0.6}))
    assert not verdict.passed
    assert verdict.main_reason == "slice 'south': roc_auc=0.5500 misses the floor 0.6000"


@pytest.mark.parametrize("bad", [math.nan, None])
def test_nan_or_missing_metric_fails_its_rule(bad):
    challenger = {k: v for k, v in {**GOOD, "roc_auc": bad}.items() if v is not None}
    verdict = judge(evaluation(challenger, {**GOOD}), ModelPolicy(floors={"roc_auc": 0.5}))
    assert not verdict.passed
    assert all(not r.passed for r in verdict.rules)
    assert "roc_auc=NaN" in verdict.main_reason or "roc_auc=missing" in verdict.main_reason


def test_policy_naming_an_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="names metric 'auc_pr'.*use one of accuracy, f1, roc_auc, log_loss"):
        judge(evaluation(GOOD), ModelPolicy(floors={"auc_pr": 0.5}))
    with pytest.raises(ConfigError, match="'rmse', which a classification model does not report"):
        ModelPolicy(primary_metric="rmse").check_metrics("classification")


def test_task_fn_returns_the_verdict():
    assert quality_gate.fn(evaluation(GOOD), ModelPolicy()).passed
