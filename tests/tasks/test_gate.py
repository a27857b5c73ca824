"""quality-gate: floors, the margin against the champion, min gain, slices, first run, NaN."""

from __future__ import annotations

import math

import pytest

from prefect_mlops.blocks import ModelPolicy
from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks.evaluate import Evaluation, Scores
from prefect_mlops.tasks.gate import judge, quality_gate


def evaluation(challenger: dict, champion: dict | None = None, slices: dict | None = None,
               task: str = "classification", metric: str = "roc_auc", interval: tuple | None = None,
               holdout_rows: int = 1000, degraded: str | None = None) -> Evaluation:
    slices = slices or {}
    return Evaluation(
        model_name="m", task=task, primary_metric=metric, holdout_rows=holdout_rows, interval=interval,
        champion_degraded=degraded,
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


NOT_WORSE = "not-worse"


def test_challenger_worse_than_champion_by_more_than_delta_is_rejected():
    verdict = judge(evaluation({**GOOD, "roc_auc": 0.83}, {**GOOD, "roc_auc": 0.85}),
                    ModelPolicy(max_drop=0.01, promote_when=NOT_WORSE))
    assert not verdict.passed
    assert "worse by 0.0200, allowed drop 0.0100" in verdict.main_reason
    assert verdict.champion_version == "3"


def test_within_delta_passes_but_min_gain_can_still_reject():
    eva = evaluation({**GOOD, "roc_auc": 0.845}, {**GOOD, "roc_auc": 0.85})
    assert judge(eva, ModelPolicy(max_drop=0.01, promote_when=NOT_WORSE)).passed
    verdict = judge(eva, ModelPolicy(max_drop=0.01, min_gain=0.01, promote_when=NOT_WORSE))
    assert not verdict.passed and "required 0.0100" in verdict.main_reason


def test_lower_is_better_metrics_use_ceilings_and_reverse_the_margin():
    eva = evaluation({"rmse": 1.2, "mae": 0.9, "r2": 0.5}, {"rmse": 1.0, "mae": 0.8, "r2": 0.6},
                     task="regression", metric="rmse")
    verdict = judge(eva, ModelPolicy(floors={"rmse": 1.5}, max_drop=0.1, promote_when=NOT_WORSE))
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


# The noise guard: with a champion, only a gain beyond noise (or against a degraded champion) promotes.

def test_a_tie_keeps_the_champion():
    verdict = judge(evaluation(GOOD, GOOD, interval=(-0.01, 0.01)), ModelPolicy())
    assert not verdict.passed
    assert verdict.rules[-1].rule == "beyond-noise"
    assert "a tie keeps the champion" in verdict.main_reason


def test_a_gain_inside_the_bootstrap_interval_is_noise():
    verdict = judge(evaluation({**GOOD, "roc_auc": 0.86}, GOOD, interval=(-0.005, 0.025)), ModelPolicy())
    assert not verdict.passed
    assert "better by 0.0100" in verdict.main_reason and "not better beyond noise" in verdict.main_reason


def test_a_gain_whose_lower_bound_is_above_zero_promotes():
    verdict = judge(evaluation({**GOOD, "roc_auc": 0.90}, GOOD, interval=(0.02, 0.08)), ModelPolicy())
    assert verdict.passed
    assert "better beyond noise" in verdict.main_reason


def test_lower_is_better_interval_is_read_the_right_way_round():
    better = evaluation({"rmse": 0.8, "mae": 0.6, "r2": 0.7}, {"rmse": 1.0, "mae": 0.8, "r2": 0.6},
                        task="regression", metric="rmse", interval=(-0.3, -0.1))
    assert judge(better, ModelPolicy()).passed
    worse = evaluation({"rmse": 1.2, "mae": 0.9, "r2": 0.5}, {"rmse": 1.0, "mae": 0.8, "r2": 0.6},
                       task="regression", metric="rmse", interval=(0.1, 0.3))
    verdict = judge(worse, ModelPolicy())
    assert not verdict.passed and "worse by 0.2000" in verdict.main_reason


def test_min_gain_promotes_inside_the_noise_under_beyond_noise():
    eva = evaluation({**GOOD, "roc_auc": 0.87}, GOOD, interval=(-0.01, 0.05))
    assert not judge(eva, ModelPolicy()).passed
    verdict = judge(eva, ModelPolicy(min_gain=0.02))
    assert verdict.passed and "at least the required gain 0.0200" in verdict.main_reason


def test_a_degraded_champion_is_replaced_by_a_challenger_that_is_not_worse():
    eva = evaluation({**GOOD, "roc_auc": 0.845}, GOOD, interval=(-0.008, 0.002),
                     degraded="roc_auc 0.70 on 500 new labelled rows vs reference 0.85")
    verdict = judge(eva, ModelPolicy(max_drop=0.01))
    assert verdict.passed and verdict.rules[-1].rule == "champion-degraded"
    assert "measurably degraded: roc_auc 0.70" in verdict.main_reason
    clearly_worse = evaluation({**GOOD, "roc_auc": 0.80}, GOOD, interval=(-0.08, -0.02), degraded="stale")
    assert not judge(clearly_worse, ModelPolicy(max_drop=0.01)).passed
    # A tie on a hold-out too noisy to bound the loss does not replace even a degraded champion.
    too_noisy = evaluation(GOOD, GOOD, interval=(-0.2, 0.2), degraded="stale")
    assert not judge(too_noisy, ModelPolicy(max_drop=0.01)).passed


def test_a_hold_out_too_small_to_tell_gives_not_enough_evidence():
    eva = evaluation({**GOOD, "roc_auc": 0.95}, GOOD, interval=(0.01, 0.2), holdout_rows=18)
    verdict = judge(eva, ModelPolicy())
    assert not verdict.passed and verdict.rules[-1].rule == "evidence"
    assert "not enough evidence: a hold-out of 18 rows" in verdict.main_reason
    assert judge(eva, ModelPolicy(min_holdout_rows=10)).passed


def test_first_run_is_not_held_to_the_evidence_rule():
    assert judge(evaluation(GOOD, holdout_rows=5), ModelPolicy()).passed
