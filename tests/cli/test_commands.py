"""`prefect-mlops train | monitor | score | status | rollback` end to end, in-process, on the embedded store."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from prefect_mlops.cli import main
from prefect_mlops.demo import period_window

NUMERIC = "tenure_months,monthly_spend,support_calls,usage_hours"
NOISE = ("Saving scikit-learn models in the pickle", "Hint: Inferred schema contains integer column",
         "Downloading artifacts")


@pytest.fixture
def store(tmp_path) -> list[str]:
    return ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workspace", str(tmp_path / "workspace")]


def test_train_monitor_score_status_rollback_from_the_command_line(churn_file, store, tmp_path, capfd):
    data = ["--data", str(churn_file), "--time-column", "event_time"]
    assert main(["train", "churn", *data, "--window", period_window(0), "--target", "churned", "--numeric", NUMERIC,
                 "--categorical", "plan,channel", "--estimator", "sklearn.linear_model.LogisticRegression",
                 "--params", '{"max_iter": 300}', "--floor", "roc_auc=0.6", *store]) == 0
    assert "churn: promoted; champion v1." in capfd.readouterr().out

    assert main(["monitor", "churn", *data, "--window", period_window(2), "--retrain", *store]) == 0
    out = capfd.readouterr().out
    assert "drift:       drifted" in out and "retraining:  promoted; champion v2." in out

    # the champion's recipe is reused: no feature options; a weak estimator is a verdict (exit 3), not a crash
    assert main(["train", "churn", *data, "--window", period_window(2), "--estimator", "sklearn.dummy.DummyClassifier",
                 "--params", '{"strategy": "prior"}', "--floor", "roc_auc=0.6", *store]) == 3
    assert "churn: rejected; champion v2." in capfd.readouterr().out

    scores = tmp_path / "scores.parquet"
    assert main(["score", "churn", *data, "--window", period_window(1), "--output", str(scores), *store]) == 0
    captured = capfd.readouterr()
    assert f"churn v2 scored 1500 rows -> {scores}" in captured.out
    assert len(pd.read_parquet(scores)) == 1500
    for noise in NOISE:
        assert noise not in captured.err

    assert main(["status", "churn", *store]) == 0
    out = capfd.readouterr().out
    assert "champion:          v2" in out and "previous champion: v1" in out
    assert "last drift check:  " in out and "drifted" in out.split("last drift check:")[1].splitlines()[0]
    assert "last performance:  " in out and "none recorded" not in out.split("last performance:")[1].splitlines()[0]
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["v1"], ["v2"], ["v3"])}
    assert set(rows) == {"v1", "v2"}  # a rejected challenger is never registered
    assert "champion" in rows["v2"] and "passed" in rows["v2"] and "previous-champion" in rows["v1"]

    assert main(["rollback", "churn", "--reason", "test", *store]) == 0
    assert "churn: champion is v1 again (rolled back from v2)" in capfd.readouterr().out


def test_a_failure_ends_in_one_line_naming_the_culprit(store, tmp_path, capfd):
    with pytest.raises(SystemExit, match=r"prefect-mlops train: data source .*missing\.parquet: no such file") as out:
        main(["train", "churn", "--data", str(tmp_path / "missing.parquet"), "--target", "y", "--numeric", "x",
              *store])
    assert "\n" not in str(out.value.code)
    assert "no such file" not in capfd.readouterr().err  # said once, by the command; not in Prefect's console log
    with pytest.raises(SystemExit, match="no versions of 'churn'"):
        main(["status", "churn", "--no-checks", *store])
    with pytest.raises(SystemExit, match="has no champion whose recipe could be reused; give --target"):
        main(["train", "churn", "--data", str(tmp_path / "missing.parquet"), *store])


@pytest.mark.parametrize("command", ["train", "score", "monitor", "rollback", "status", "backtest", "repair", "deploy",
                                     "up", "demo-server"])
def test_every_command_shows_examples_in_its_help(command, capsys):
    with pytest.raises(SystemExit, match="0"):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"prefect-mlops {command} " in out


def test_version(capsys):
    import prefect_mlops

    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"prefect-mlops {prefect_mlops.__version__}"


@pytest.mark.parametrize(("params", "said"), [("{max_iter: 3}", r"--params .* is not JSON \(Expecting property name"),
                                              ("[1]", "expected a JSON object of estimator parameters, got a list")])
def test_bad_params_are_named_before_anything_runs(params, said, store, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["train", "churn", "--data", str(tmp_path / "x.parquet"), "--target", "y", "--params", params, *store])
    assert re.search(said, capsys.readouterr().err)


def test_a_bad_feature_spec_names_the_field_without_pydantic_noise(churn_file, store):
    with pytest.raises(SystemExit, match=r"prefect-mlops train: FeatureSpec: [a-z_.]+: ") as out:
        main(["train", "churn", "--data", str(churn_file), "--target", "churned", "--numeric", "churned", *store])
    assert "input_value" not in str(out.value.code) and "errors.pydantic.dev" not in str(out.value.code)
