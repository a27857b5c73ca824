"""S3 I/O through the DataSource Block: every read and write names the URI, the cause and the fix,
and a failed write leaves nothing behind (nor touches what was there).

The store is moto's S3 server (`s3_endpoint` in conftest); the full store is a small HTTP server that
answers a PUT as MinIO does when its drives are full.
"""

from __future__ import annotations

import inspect
import io
import re
import textwrap

import boto3
import pandas as pd
import pytest

from prefect_mlops.blocks import DataSource, MlflowServer
from prefect_mlops.demo import period_window
from prefect_mlops.errors import DataSourceError, StorageError
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.labels import read_prediction_log
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.tasks.score import score_dataset
from prefect_mlops.workspace import Workspace, read_frame
from tests.conftest import free_port
from tests.http_stub import stub_server
from tests.tasks.stages import promote_cycle, train_and_judge

OUT = "s3://scores/churn/predictions.parquet"
BEFORE = b"last month's predictions"


@pytest.fixture(scope="module")
def champion(tmp_path_factory, churn_file):
    """One promoted churn model, trained once for the module; scoring only reads it."""
    root = tmp_path_factory.mktemp("s3-scoring")
    server = MlflowServer(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                          artifact_location=(root / "mlartifacts").as_uri(), experiment="tests")
    workspace = Workspace(root / "workspace")
    spec = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"], slice_column="region", time_column="event_time")
    cycle = train_and_judge(DataSource(uri=str(churn_file), time_column="event_time"), spec,
                            TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}),
                            server=server, workspace=workspace, window=period_window(0))
    promote_cycle(cycle, server=server, workspace=workspace)
    rows = workspace.write_snapshot(read_frame(cycle.features.dataset).head(20), name="to-score")
    return server, workspace, rows


@pytest.fixture
def store(s3_endpoint):
    """A `scores` bucket holding last month's predictions at OUT, and a client that can see it."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket="scores")
    client.put_object(Bucket="scores", Key="churn/predictions.parquet", Body=BEFORE)
    yield client
    for item in client.list_objects_v2(Bucket="scores").get("Contents", []):
        client.delete_object(Bucket="scores", Key=item["Key"])
    client.delete_bucket(Bucket="scores")


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A process where boto3 finds no credentials anywhere: environment, files, instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a session made earlier may hold found credentials


def keys(client, bucket: str = "scores") -> dict[str, bytes]:
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def score_to(champion, uri: str, output: DataSource):
    server, workspace, rows = champion
    return score_dataset(rows, model_name="churn", output_uri=uri, output=output, mlflow_server=server,
                         workspace=workspace)


def test_scoring_to_s3_replaces_the_object_with_the_whole_file(champion, store, s3_endpoint):
    output = DataSource(uri=OUT, s3_endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test")
    result = score_to(champion, OUT, output)
    scored = pd.read_parquet(io.BytesIO(output.read_bytes(OUT)))
    assert result.output_uri == OUT and len(scored) == result.rows == 20 and "prediction" in scored.columns


@pytest.mark.parametrize("case", ["missing credentials", "incomplete credentials", "unreachable endpoint",
                                  "missing bucket"])
def test_scoring_to_s3_that_fails_names_the_uri_and_the_fix_and_writes_nothing(
        champion, store, s3_endpoint, no_credentials, case):
    uri, error, message = OUT, DataSourceError, None
    if case == "missing credentials":
        output = DataSource(uri=OUT, s3_endpoint_url=s3_endpoint)
        message = (r"no S3 credentials were found \(the endpoint was not contacted\); set the block's "
                   r"aws_access_key_id and aws_secret_access_key, or AWS_ACCESS_KEY_ID")
    elif case == "incomplete credentials":
        output = DataSource(uri=OUT, s3_endpoint_url=s3_endpoint, aws_access_key_id="test")
        message = r"the S3 credentials are incomplete .*set both aws_access_key_id and aws_secret_access_key"
    elif case == "unreachable endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"
        output = DataSource(uri=OUT, s3_endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test")
        message = rf"cannot reach the S3 store at {re.escape(endpoint)} .*check DataSource.s3_endpoint_url"
    else:
        uri = "s3://no-such-bucket/churn/predictions.parquet"
        output = DataSource(uri=uri, s3_endpoint_url=s3_endpoint, aws_access_key_id="test",
                            aws_secret_access_key="test")
        message = (r"bucket 'no-such-bucket' does not exist; check the bucket name or the endpoint, or create the "
                   r"bucket")
    with pytest.raises(error, match=rf"^batch scoring output {re.escape(uri)}: {message}.*; nothing was written to "
                                    rf"{re.escape(uri)}$"):
        score_to(champion, uri, output)
    assert keys(store) == {"churn/predictions.parquet": BEFORE}  # last month's predictions untouched
    assert "no-such-bucket" not in {b["Name"] for b in store.list_buckets()["Buckets"]}


@pytest.fixture
def full_store():
    """An S3 endpoint that refuses every write as MinIO does when its drives are full (HTTP 507)."""
    body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>XMinioStorageFull</Code><Message>Storage "
            b"backend has reached its minimum free drive threshold.</Message></Error>")
    with stub_server(lambda method, path: (507, {"Content-Type": "application/xml"}, body)) as url:
        yield url


def test_a_full_store_is_a_storage_error_naming_the_uri(full_store):
    output = DataSource(uri=OUT, s3_endpoint_url=full_store, aws_access_key_id="test", aws_secret_access_key="test")
    with pytest.raises(StorageError, match=rf"^batch scoring output {OUT}: the S3 store is full \(XMinioStorageFull\); "
                                           rf"free space in the bucket 'scores' or raise its quota, then retry; "
                                           rf"nothing was written to {OUT}$"):
        output.write_bytes(b"predictions", what="batch scoring output")


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://scores", r"^output s3://scores: expected s3://<bucket>/<key>$"),
    ("s3://scores/", r"^output s3://scores/: expected s3://<bucket>/<key>$"),
    ("/tmp/out.parquet", r"^output /tmp/out.parquet: expected s3://<bucket>/<key>$"),
])
def test_a_uri_without_bucket_and_key_is_refused_before_the_store_is_asked(uri, message):
    with pytest.raises(DataSourceError, match=message):
        DataSource(uri="s3://scores/x").write_bytes(b"x", uri)


def test_reading_and_listing_name_the_uri_and_the_missing_bucket(s3_endpoint, no_credentials):
    source = DataSource(uri="s3://nowhere/log/", s3_endpoint_url=s3_endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test")
    with pytest.raises(DataSourceError, match=r"^prediction log s3://nowhere/log/: bucket 'nowhere' does not exist; "
                                              r"check the bucket name or the endpoint$"):
        read_prediction_log("s3://nowhere/log/", output=source)
    with pytest.raises(DataSourceError, match=r"^prediction log s3://nowhere/log/: no S3 credentials were found"):
        read_prediction_log("s3://nowhere/log/")


def test_reading_back_what_was_written_and_listing_it(store, s3_endpoint):
    source = DataSource(uri="s3://scores/churn/", s3_endpoint_url=s3_endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test")
    assert source.write_bytes(b"new", "s3://scores/churn/next.parquet") == "s3://scores/churn/next.parquet"
    assert source.list_uris() == ["s3://scores/churn/next.parquet", OUT]
    assert source.read_bytes("s3://scores/churn/next.parquet") == b"new"


@pytest.mark.parametrize("method", [DataSource.read_bytes, DataSource.download_to, DataSource.write_bytes,
                                    DataSource.list_uris])
def test_the_io_methods_examples_run(method):
    # The package test runs module and class examples; these are methods'.
    (code,) = re.findall(r"```python\n(.*?)```", inspect.getdoc(method), re.S)
    exec(compile(textwrap.dedent(code), "<docstring>", "exec"), {})
