"""The backtest: streams load offline, static and oracle are deterministic, the gain formula's edges,
the reports, and one tiny replay through the real flows."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

from prefect_mlops.backtest import replay, report
from prefect_mlops.backtest.replay import PeriodResult, StreamResult, baselines, gain_recovered, worse_by
from prefect_mlops.backtest.run import STREAM_NAMES, load_policy, parse_args
from prefect_mlops.backtest.streams import PERIOD, STREAMS, TIME, load_stream
from prefect_mlops.errors import ConfigError

# name -> (periods, total rows, task): what each stream must look like at its default size.
EXPECTED = {
    "agrawal_abrupt": (20, 20000, "classification"),
    "hyperplane_gradual": (20, 20000, "classification"),
    "friedman_drift": (20, 20000, "regression"),
    "sea_covariate": (20, 20000, "classification"),
    "sea_stable": (20, 20000, "classification"),
    "bikeshare": (12, 8645, "regression"),
    "nyse": (24, 6031, "regression"),
    "weekly": (21, 1089, "classification"),
    "trump_approval": (11, 1001, "regression"),
}


@pytest.fixture
def offline(monkeypatch):
    """No socket may connect anywhere, and any proxy points at a closed port: a download fails loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the backtest opened a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")


def test_stream_names_match_the_registry():
    assert tuple(STREAMS) == STREAM_NAMES == tuple(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_stream_loads_offline_with_its_shape(name, offline):
    periods, rows, task = EXPECTED[name]
    stream = load_stream(name)
    assert (stream.n_periods, len(stream.frame), stream.task) == (periods, rows, task)
    frame = stream.frame
    assert frame[TIME].is_monotonic_increasing
    assert sorted(frame[PERIOD].unique()) == list(range(periods))
    spec = stream.features
    assert not frame[[*spec.feature_columns, spec.target]].isna().any().any()
    assert frame[spec.target].nunique() >= 2
    # Every period's rows lie inside its window, and the source file the flows read has no period column.
    for t in (0, periods - 1):
        start, end = (np.datetime64(x) for x in stream.window(t, t + 1).split("/"))
        times = stream.rows(t, t + 1)[TIME].to_numpy()
        assert len(times) and times.min() >= start and times.max() < end
    assert PERIOD not in stream.source_frame(2).columns
    assert stream.initial_periods < periods


def test_synthetic_streams_are_the_same_on_every_load():
    first = load_stream("agrawal_abrupt", rows_per_period=40, periods=6)
    again = load_stream("agrawal_abrupt", rows_per_period=40, periods=6)
    assert first.frame.equals(again.frame)
    assert first.drift_periods == (4,)


def test_real_streams_keep_their_sizes():
    with pytest.raises(ConfigError, match="real data"):
        load_stream("bikeshare", rows_per_period=10)
    with pytest.raises(ConfigError, match="unknown; choose from"):
        load_stream("no_such_stream")


@pytest.mark.parametrize("name", ["friedman_drift", "sea_covariate"])
def test_static_and_oracle_figures_are_reproduced_exactly_twice(name):
    runs = [baselines(load_stream(name, rows_per_period=80, periods=7)) for _ in range(2)]
    static, oracle = runs[0]
    assert runs[1] == runs[0]  # exact float equality: same data, same seeds, same figures
    assert len(static) == len(oracle) == 4
    assert all(math.isfinite(v) for v in (*static, *oracle))
    # The first scored period: the oracle's window is the static model's training window.
    assert oracle[0] == static[0]


def test_static_figure_is_the_plain_sklearn_figure():
    from sklearn.metrics import mean_squared_error
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks.features import make_transform
    from prefect_mlops.tasks.train import build_estimator

    stream = load_stream("friedman_drift", rows_per_period=60, periods=6)
    spec = stream.features
    train, test = stream.rows(0, 3), stream.rows(5, 6)
    model = Pipeline([("features", make_transform(spec)), ("model", build_estimator(stream.trainer))])
    model.fit(train[spec.feature_columns], train[spec.target])
    expected = float(np.sqrt(mean_squared_error(test[spec.target], model.predict(test[spec.feature_columns]))))
    static, _ = baselines(stream)
    assert static[-1] == expected
    with pytest.raises(ConfigError, match="at least one period"):
        baselines(stream, window=0)


@pytest.mark.parametrize(("policy", "static", "oracle", "lower", "expected"), [
    (0.85, 0.80, 0.90, False, 0.5),
    (0.90, 0.80, 0.90, False, 1.0),
    (0.95, 0.80, 0.90, False, 1.5),  # better than the oracle
    (0.75, 0.80, 0.90, False, -0.5),  # worse than never retraining
    (9.0, 10.0, 8.0, True, 0.5),  # rmse: lower is better
    (11.0, 10.0, 8.0, True, -0.5),
    (0.8, 0.8, 0.8, False, None),  # nothing to recover
    (0.9, 0.8, 0.7, False, None),  # the oracle is worse than static
    (8.0, 8.0, 9.0, True, None),
    (0.81, 0.800, 0.8039, False, None),  # oracle within 0.5% of static: noise
    (float("nan"), 0.8, 0.9, False, None),
    (None, 0.8, 0.9, False, None),
])
def test_gain_recovered_edges(policy, static, oracle, lower, expected):
    got = gain_recovered(policy, static, oracle, lower_better=lower)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_worse_by_is_relative_and_oriented():
    assert worse_by(0.78, 0.80, lower_better=False) == pytest.approx(0.025)
    assert worse_by(11.0, 10.0, lower_better=True) == pytest.approx(0.1)
    assert worse_by(9.0, 10.0, lower_better=True) == pytest.approx(-0.1)


def _result(expect: str = "drift", metric: str = "rmse", **figures) -> StreamResult:
    stream = {"name": "toy", "task": "regression", "expect": expect, "periods": 6, "initial_periods": 3,
              "estimator": "sklearn.linear_model.Ridge", "description": "a toy", "drift_periods": [4]}
    result = StreamResult(stream=stream, metric=metric, lower_is_better=metric == "rmse", oracle_window=3, delta=0.02,
                          policy={"model_policy": {"max_drop": 0.01}, "retrain_policy": None})
    result.periods = [
        PeriodResult(3, "w3", 10, static=1.0, oracle=1.0, policy=1.0, champion="1"),
        PeriodResult(4, "w4", 10, static=2.0, oracle=1.5, policy=2.0, champion="1", retrained=True, promoted=True,
                     bad_promotion=False),
        PeriodResult(5, "w5", 10, static=2.0, oracle=1.0, policy=float("nan"), champion="2",
                     crash="DataValidationError: x"),
    ]
    result.crashes = ["period 5: DataValidationError: x"]
    for key, value in figures.items():
        setattr(result, key, value)
    return result


def test_summary_and_targets():
    result = _result()
    summary = result.summary()
    assert summary["policy"] == pytest.approx(1.5)  # the NaN period is left out of the mean
    assert summary["static"] == pytest.approx(5 / 3) and summary["oracle"] == pytest.approx(3.5 / 3)
    assert summary["gain_recovered"] == pytest.approx((5 / 3 - 1.5) / (5 / 3 - 3.5 / 3))
    assert (summary["retrains"], summary["oracle_retrains"], summary["promotions"], summary["crashes"]) == (1, 3, 1, 1)
    assert report.meets_target(summary, delta=0.02) == (False, "1 crashes")
    clean = {**summary, "crashes": 0, "gain_recovered": 0.95}
    assert report.meets_target(clean, delta=0.02) == (True, "gain 0.95, retrains 1/3")
    assert report.meets_target({**clean, "retrains": 2}, delta=0.02)[0] is False
    assert report.meets_target({**clean, "expect": "stable"}, delta=0.02) == (False, "1 retrains")
    covariate = {**clean, "expect": "covariate", "policy": 1.7, "static": 5 / 3}
    assert report.meets_target(covariate, delta=0.02) == (True, "policy no worse than static")


def test_reports_table_png_and_json(tmp_path):
    result = _result()
    table = report.markdown_table([result])
    assert "| toy | drift | rmse ↓ | 3 |" in table and "missed: 1 crashes" in table
    assert report.gain_text(-0.0001) == "0.00" and report.gain_text(None) == "-"
    assert "DataValidationError" in report.stream_markdown(result)
    png = report.plot_stream(result, tmp_path / "toy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = report.write_json([result], tmp_path / "backtest.json", quick=True)
    loaded = json.loads(path.read_text())  # strict JSON: the NaN became null
    assert loaded["streams"][0]["periods"][2]["policy"] is None
    assert loaded["streams"][0]["summary"]["retrains"] == 1


def test_policy_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"model_policy": {"max_drop": 0.0, "min_gain": 0.01}}))
    gate, retrain = load_policy(path)
    assert (gate.max_drop, gate.min_gain, retrain) == (0.0, 0.01, None)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_policy(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        load_policy(path)
    path.write_text(json.dumps({"model_policy": {"max_drop": -1}}))
    with pytest.raises(ConfigError, match="max_drop"):
        load_policy(path)
    assert load_policy(None) == (None, None)


def test_policy_file_with_retrain_policy_fields(tmp_path):
    blocks = pytest.importorskip("prefect_mlops.blocks")
    if not hasattr(blocks, "RetrainPolicy"):
        pytest.skip("no RetrainPolicy block in this version")
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"min_rows": 50}))
    gate, retrain = load_policy(path)
    assert gate is None and retrain.min_rows == 50


def test_command_line(capsys):
    args = parse_args(["--stream", "bikeshare", "--stream", "weekly", "--quick", "--output", "out"])
    assert (args.stream, args.quick, str(args.output), args.oracle_window) == (["bikeshare", "weekly"], True, "out", 3)
    with pytest.raises(SystemExit, match="2"):
        parse_args(["--stream", "no_such_stream"])
    assert "invalid choice: 'no_such_stream'" in capsys.readouterr().err


def test_tiny_replay_through_the_real_flows(tmp_path):
    """Two scored periods of a stable stream through continuous_training and drift_monitor."""
    from prefect_mlops.backtest.replay import stream_store

    stream = load_stream("sea_stable", rows_per_period=150, periods=5)
    seen = []
    result = replay.replay_policy(stream, tmp_path / "home", on_period=seen.append)
    assert result.crashes == [], result.crashes
    assert result.first_training.startswith("promoted")
    assert [p.period for p in result.periods] == [3, 4] == [p.period for p in seen]
    static, oracle = baselines(stream)
    assert [p.static for p in result.periods] == static and [p.oracle for p in result.periods] == oracle
    assert result.periods[0].champion == "1"  # the first champion scores the first period
    for period in result.periods:
        assert math.isfinite(period.policy) and period.decision
    assert result.promotions <= result.retrains <= len(result.periods)
    # The reports: an MLflow run in the stream's store with the figures and files, and a Prefect artifact.
    png = report.plot_stream(result, tmp_path / "sea_stable.png")
    server, workspace = stream_store(tmp_path / "home", stream.name)
    run_id = report.log_mlflow_run(result, server=server, workspace=workspace, files=[png])
    run = server.client(workspace).get_run(run_id)
    assert run.data.params["stream"] == "sea_stable" and run.data.metrics["retrains"] == 0
    names = {a.path for a in server.client(workspace).list_artifacts(run_id)}
    assert {"sea_stable.png", "backtest.json"} <= names
    assert report.publish_artifact(report.markdown_table([result]), key="backtest-test")


def test_describe_monitor_reads_a_decision_or_the_drift_report():
    from types import SimpleNamespace as NS

    from prefect_mlops.backtest.replay import describe_monitor

    cycle = NS(outcome="promoted", gate_reason="better beyond noise", message="")
    decided = NS(drift=NS(detected=False), retrain=cycle,
                 decision=NS(retrain=True, trigger="performance", reasons=["roc_auc 4% worse", "no drift"]))
    assert describe_monitor(decided) == (False, "performance",
                                         "roc_auc 4% worse; no drift / promoted: better beyond noise")
    kept = NS(drift=NS(detected=True), retrain=None, decision=NS(retrain=False, trigger=None, reasons=["cool-down"]))
    assert describe_monitor(kept) == (True, None, "cool-down")
    assert describe_monitor(NS(drift=NS(detected=False), retrain=None)) == (False, None, "no drift")
