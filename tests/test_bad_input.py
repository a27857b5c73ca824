"""Bad input gets a clear error naming the culprit, and the champion never moves.

One champion is trained for the module; every case then runs the real flow against the
same registry and checks that `@champion` still points at version 1.
"""

from __future__ import annotations

import boto3
import pandas as pd
import pytest

from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
from prefect_mlops.demo import make_churn_data, period_window
from prefect_mlops.flows import batch_score, continuous_training
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec, find_model
from prefect_mlops.workspace import Workspace
from tests.conftest import free_port, start_moto

FEATURES = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], slice_column="region")
TRAINER = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    server = MlflowServer(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                          artifact_location=(root / "mlartifacts").as_uri())
    workspace = Workspace(root / "workspace")
    good = root / "good.parquet"
    make_churn_data(0, rows=1200).to_parquet(good, index=False)
    first = continuous_training("churn", DataSource(uri=str(good)), FEATURES, TRAINER, mlflow_server=server,
                                workspace=str(workspace.root))
    assert first.champion_version == "1"
    return {"root": root, "server": server, "workspace": workspace, "good": good}


@pytest.fixture(scope="module")
def s3(store):
    proc, endpoint = start_moto()
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                          region_name="us-east-1")
    client.create_bucket(Bucket="lake")
    client.upload_file(str(store["good"]), "lake", "churn.parquet")
    auth_proc, auth_endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield endpoint, auth_endpoint
    for p in (proc, auth_proc):
        p.terminate()
        p.wait(10)


def data_variant(store, name: str, change) -> DataSource:
    path = store["root"] / f"{name}.parquet"
    change(make_churn_data(1, rows=1200)).to_parquet(path, index=False)
    return DataSource(uri=str(path))


def file_with(store, name: str, content: bytes) -> DataSource:
    path = store["root"] / name
    path.write_bytes(content)
    return DataSource(uri=str(path))


def s3_source(endpoint, uri, key="k"):
    return DataSource(uri=uri, s3_endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key="s",
                      region_name="us-east-1")


CASES = {
    "missing file": (lambda st, s3: DataSource(uri=str(st["root"] / "nope.parquet")), {}, ["nope.parquet",
                                                                                        "no such file"]),
    "empty file": (lambda st, s3: file_with(st, "empty.parquet", b""), {}, ["empty.parquet", "empty"]),
    "corrupt parquet": (lambda st, s3: file_with(st, "corrupt.parquet", b"PAR1garbage"), {},
                        ["corrupt.parquet", "not a readable Parquet file"]),
    "unparseable csv": (lambda st, s3: file_with(st, "bad.csv", b"a,b\n1,2\n1,2,3,4\n"), {},
                        ["bad.csv", "not parseable CSV"]),
    "unknown scheme": (lambda st, s3: DataSource(uri="gopher://host/churn.parquet"), {},
                       ["gopher://host/churn.parquet", "unknown URI scheme"]),
    "missing s3 bucket": (lambda st, s3: s3_source(s3[0], "s3://no-bucket/churn.parquet"), {},
                          ["s3://no-bucket/churn.parquet", "bucket 'no-bucket' does not exist"]),
    "missing s3 key": (lambda st, s3: s3_source(s3[0], "s3://lake/nope.parquet"), {},
                       ["s3://lake/nope.parquet", "no object 'nope.parquet'"]),
    "wrong credentials": (lambda st, s3: s3_source(s3[1], "s3://lake/churn.parquet", key="AKIAWRONG"), {},
                          ["s3://lake/churn.parquet", "credentials"]),
    "target missing": (lambda st, s3: DataSource(uri=str(st["good"])),
                       {"features": FEATURES.model_copy(update={"target": "left_us"})}, ["'left_us'", "missing"]),
    "feature missing": (lambda st, s3: data_variant(st, "nofeat", lambda f: f.drop(columns="monthly_spend")), {},
                        ["monthly_spend"]),
    "wrong dtype": (lambda st, s3: data_variant(st, "dtype", lambda f: f.assign(
        tenure_months=f.tenure_months.astype(str) + " months")), {}, ["tenure_months"]),
    "all-NaN column": (lambda st, s3: data_variant(st, "nan", lambda f: f.assign(usage_hours=float("nan"))), {},
                       ["usage_hours"]),
    "one-class target": (lambda st, s3: data_variant(st, "oneclass", lambda f: f.assign(churned=0)), {},
                         ["churned", "single class"]),
    "estimator path": (lambda st, s3: DataSource(uri=str(st["good"])),
                       {"trainer": TrainerSpec(estimator="sklearn.ensemble.GradientBoostedTrees")},
                       ["sklearn.ensemble.GradientBoostedTrees", "cannot be imported"]),
    "estimator parameter": (lambda st, s3: DataSource(uri=str(st["good"])),
                            {"trainer": TrainerSpec(estimator="sklearn.linear_model.LogisticRegression",
                                                    params={"C": "lots"})}, ["LogisticRegression", "'C'"]),
    "unknown gate metric": (lambda st, s3: DataSource(uri=str(st["good"])),
                            {"policy": ModelPolicy(floors={"precision_at_10": 0.5})},
                            ["precision_at_10", "use one of"]),
    "mlflow unreachable": (lambda st, s3: DataSource(uri=str(st["good"])),
                           {"mlflow_server": MlflowServer(tracking_uri=f"http://127.0.0.1:{free_port()}")},
                           ["unreachable", "Nothing was registered"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_culprit_and_the_champion_does_not_move(store, s3, case):
    make_source, overrides, expected = CASES[case]
    kwargs = {"trainer": TRAINER, "mlflow_server": store["server"], "workspace": str(store["workspace"].root),
              "force": True, **overrides}
    features = kwargs.pop("features", FEATURES)
    state = continuous_training("churn", make_source(store, s3), features, return_state=True, **kwargs)
    assert state.is_failed(), state
    for text in expected:
        assert text in state.message, f"{text!r} not in {state.message!r}"
    champion = find_model("churn", mlflow_server=store["server"], workspace=store["workspace"])
    assert champion.model.version == "1"
    versions = store["server"].client(store["workspace"]).search_model_versions("name='churn'")
    assert [str(v.version) for v in versions] == ["1"]


def test_unseen_category_at_scoring_time_is_scored_and_reported(store, tmp_path):
    rows = make_churn_data(1, rows=100).assign(plan=["platinum"] * 50 + ["basic"] * 50)
    path = tmp_path / "score.parquet"
    rows.to_parquet(path, index=False)
    out = tmp_path / "scored.parquet"
    result = batch_score("churn", DataSource(uri=str(path)), str(out), mlflow_server=store["server"],
                         workspace=str(store["workspace"].root))
    assert result.unseen_categories == {"plan": ["platinum"]}
    assert pd.read_parquet(out)["prediction"].notna().all()
    assert find_model("churn", mlflow_server=store["server"], workspace=store["workspace"]).model.version == "1"


def test_window_in_the_wrong_format_is_rejected_naming_the_field(store):
    state = continuous_training("churn", DataSource(uri=str(store["good"]), time_column="event_time"), FEATURES,
                                window=period_window(0).replace("/", " to "), mlflow_server=store["server"],
                                workspace=str(store["workspace"].root), return_state=True)
    assert state.is_failed() and "window" in state.message and "ISO-8601" in state.message
