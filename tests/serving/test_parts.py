"""The service's parts without a server: request parsing, the canary rules, the label join."""

from __future__ import annotations

import pandas as pd
import pytest

from prefect_mlops.errors import FeatureError
from prefect_mlops.serving.app import canary_point
from prefect_mlops.serving.schema import MAX_PROBLEMS, Column, InputSchema, RequestError
from prefect_mlops.tasks.labels import join_predictions
from prefect_mlops.tasks.rollout import AliasStats, judge_canary

SCHEMA = InputSchema([Column("age", "long"), Column("spend", "double"), Column("plan", "string"),
                      Column("note", "string", required=False)])


def test_every_request_form_gives_the_same_columns():
    records = SCHEMA.parse({"records": [{"age": 3, "spend": 1.5, "plan": "a"}, {"age": 4, "spend": 2, "plan": "b"}]})
    columns = SCHEMA.parse({"columns": {"age": [3, 4], "spend": [1.5, 2], "plan": ["a", "b"]}})
    split = SCHEMA.parse({"dataframe_split": {"columns": ["age", "spend", "plan"], "data": [[3, 1.5, "a"],
                                                                                          [4, 2, "b"]]}})
    assert records == columns == split
    assert records[0]["note"] == [None, None] and records[1] == 2
    frame = SCHEMA.frame(records[0])
    assert str(frame["age"].dtype) == "int64" and str(frame["spend"].dtype) == "float64"


def test_problems_name_field_and_row_and_are_capped():
    with pytest.raises(RequestError, match=r"field 'age' \(row 1\): expected an integer, got 'x'") as caught:
        SCHEMA.parse({"records": [{"age": 1, "spend": 1.0, "plan": "a"}, {"age": "x", "spend": 1.0, "plan": "a"}]})
    assert caught.value.problems == [{"field": "age", "row": 1, "problem": "expected an integer, got 'x'"}]
    many = [{"age": "x", "spend": "y", "plan": 1}] * 50
    with pytest.raises(RequestError, match="field 'age'") as caught:
        SCHEMA.parse({"records": many})
    assert len(caught.value.problems) == MAX_PROBLEMS
    with pytest.raises(RequestError, match=r"field 'spend': expected a finite number, got inf"):
        SCHEMA.parse({"records": [{"age": 1, "spend": float("inf"), "plan": "a"}]})


def test_canary_points_spread_evenly():
    points = [canary_point(f"k{i}") for i in range(4000)]
    assert abs(sum(p < 0.05 for p in points) / 4000 - 0.05) < 0.015
    assert abs(sum(p < 0.5 for p in points) / 4000 - 0.5) < 0.03


RULES = {"min_requests": 100, "max_error_rate": 0.01, "max_latency_ratio": 2.0, "latency_slack_ms": 2.0}


def stats(requests=200, errors=0, latency_ms=1.0):
    return AliasStats(requests=requests, errors=errors, latency_sum=latency_ms / 1000 * requests,
                      latency_count=requests)


@pytest.mark.parametrize(("canary", "labelled", "decision", "says"), [
    (stats(), None, "advance", "200 canary requests"),
    (stats(requests=20), None, "rollback", "fewer than min_requests 100"),
    (stats(errors=5), None, "rollback", "error rate 2.50%"),
    (stats(latency_ms=5.0), None, "rollback", "mean latency 5.00 ms is above 4.00 ms"),
    (stats(), {"canary": (0.30, 100), "champion": (0.20, 100)}, "rollback", "worse than the champion's"),
    (stats(), {"canary": (0.30, 10), "champion": (0.20, 10)}, "advance", "200 canary requests"),
])
def test_judge_canary(canary, labelled, decision, says):
    judgement = judge_canary(stats(), canary, labelled=labelled, **RULES)
    assert judgement.decision == decision and says in judgement.reason


def test_labels_join_served_rows_by_request_id_and_the_latest_label_wins():
    log = pd.DataFrame({"request_id": ["a", "a", "b", "c"], "role": ["served", "shadow", "served", "served"],
                        "alias": ["champion", "shadow", "canary", "champion"], "prediction": [1, 0, 1, 0],
                        "age": [3, 3, 4, 5]})
    labels = pd.DataFrame({"request_id": ["a", "b", "b"], "churned": [1, 1, 0]})
    joined = join_predictions(log, labels)
    assert joined[["request_id", "alias", "churned", "age"]].values.tolist() == [["a", "champion", 1, 3],
                                                                                 ["b", "canary", 0, 4]]
    with pytest.raises(FeatureError, match="labels: no column 'key' to join on"):
        join_predictions(log, labels, on="key")


def test_the_prediction_log_goes_to_s3_in_batches_and_reads_back(s3_endpoint):
    from prefect_mlops.blocks import DataSource
    from prefect_mlops.serving.predlog import PredictionLog
    from prefect_mlops.tasks.labels import read_prediction_log

    output = DataSource(uri="s3://predictions/churn", s3_endpoint_url=s3_endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test")
    output.s3_client().create_bucket(Bucket="predictions")
    log = PredictionLog("s3://predictions/churn", model_name="churn", output=output, flush_seconds=60)
    for i in range(3):
        log.append({"request_id": [f"r{i}"], "prediction": [i % 2], "age": [i]})
    log.close()  # one write for the three chunks
    assert len(log.files) == 1 and log.files[0].startswith("s3://predictions/churn/date=") and log.dropped == 0
    frame = read_prediction_log("s3://predictions/churn", output=output)
    assert frame["request_id"].tolist() == ["r0", "r1", "r2"]


def test_a_prediction_log_that_cannot_be_written_counts_what_it_lost(tmp_path):
    from prefect_mlops.serving.predlog import PredictionLog

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    lost: list[int] = []
    log = PredictionLog(str(blocker / "log"), model_name="churn", on_drop=lost.append)
    log.append({"request_id": ["r1", "r2"], "prediction": [0, 1]})
    log.close()
    assert log.dropped == 2 and lost == [2] and log.files == []
