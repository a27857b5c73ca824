"""Where a model's data comes from: a local path or an S3 (or S3-compatible) object."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from prefect_mlops.errors import DataSourceError, StorageError
from prefect_mlops.log import brief
from prefect_mlops.refs import reject_unknown_keys

if TYPE_CHECKING:
    from botocore.client import BaseClient


class DataSource(Block):
    """A dataset to ingest: a Parquet or CSV file (or folder of Parquet files), local or on S3.

    Example:
        ```python
        from prefect_mlops.blocks import DataSource
        saved = DataSource.load("BLOCK_NAME")
        source = DataSource(uri="s3://lake/churn/2024.parquet", s3_endpoint_url="http://127.0.0.1:9000")
        assert source.scheme() == "s3"
        # Every S3 read and write goes through the Block: source.read_bytes(), source.download_to(path),
        # source.write_bytes(data, uri).
        ```
    """

    _block_type_name = "ML Data Source"
    _block_type_slug = "prefect-mlops-data-source"
    _logo_url = "https://images.ctfassets.net/gm98wzqotmnx/1jbV4lceHOjGgunX15lUwo/db88e184d727f721575aeb054a37e277/aws.png"
    _documentation_url = "https://github.com/prefect-mlops/prefect-mlops#blocks"
    _description = "A Parquet or CSV dataset on a local disk or in an S3-compatible object store."

    uri: str = Field(description="Path, file:// or s3://bucket/key of a Parquet or CSV file (or Parquet folder).")
    format: Literal["auto", "parquet", "csv"] = Field(
        default="auto", description="File format; 'auto' reads it from the file name's suffix."
    )
    time_column: str | None = Field(
        default=None, description="Column holding each row's timestamp; windows are cut on it."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, Ceph...); empty for AWS."
    )
    aws_access_key_id: str | None = Field(
        default=None, description="Access key id; empty to use the environment's AWS credentials."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key matching the access key id."
    )
    region_name: str | None = Field(default=None, description="AWS region, e.g. us-east-1.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Prefect's own keys (block_type_slug, _block_document_id...) travel with a saved Block.
        return reject_unknown_keys(cls, data, also=("block_type_slug",))

    @field_validator("uri")
    @classmethod
    def _uri_names_something(cls, value: str) -> str:
        # An empty path would read the working folder as a Parquet dataset.
        if not value.strip():
            raise ValueError("DataSource.uri is empty; give a path, file:// or s3://bucket/key of a Parquet "
                             "or CSV file (or Parquet folder)")
        if value != value.strip():
            raise ValueError(f"DataSource.uri {brief(value)} starts or ends with spaces; remove them")
        if value.rstrip("/").lower() in ("s3:", "file:", "s3://", "file://"):
            raise ValueError(f"DataSource.uri {brief(value)} names no file; add the path or bucket and key")
        return value

    def scheme(self) -> str:
        """`file` for local paths, else the URI's scheme (`s3`, ...)."""
        head, sep, _ = self.uri.partition("://")
        return head.lower() if sep else "file"

    def s3_client(self) -> BaseClient:
        """A boto3 S3 client for this source; the secret is unwrapped only here."""
        import boto3
        from botocore.config import Config

        secret = self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else None
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=secret,
            region_name=self.region_name or "us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5),
        )

    def explain_s3_failure(self, exc: Exception) -> str:
        """What a botocore error that is not the store's answer means for this source, and what to do.

        Missing credentials are named as such: boto3 looks for them before it contacts the endpoint,
        so the endpoint is not the problem then.
        """
        kind = type(exc).__name__
        if kind == "NoCredentialsError":
            return ("no S3 credentials were found (the endpoint was not contacted); set the block's "
                    "aws_access_key_id and aws_secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "in the environment of the process that runs the flow (or an AWS profile)")
        if kind == "PartialCredentialsError":
            return (f"the S3 credentials are incomplete ({exc}); set both aws_access_key_id and "
                    "aws_secret_access_key")
        return (f"cannot reach the S3 store at {self.s3_endpoint_url or 'AWS'} ({exc}); "
                "check DataSource.s3_endpoint_url")

    def read_bytes(self, uri: str | None = None, *, what: str = "data source") -> bytes:
        """The whole S3 object at `uri` (this source's own `uri` by default), read with this source's store settings.

        Every failure is a `DataSourceError` that starts with `what` and the URI and says what is wrong
        (credentials, endpoint, bucket, key, permission) and what to do.

        Example:
            ```python
            from prefect_mlops.blocks import DataSource
            from prefect_mlops.errors import DataSourceError
            source = DataSource(uri="s3://lake/churn.csv", s3_endpoint_url="http://127.0.0.1:9",
                                aws_access_key_id="key", aws_secret_access_key="secret")
            try:
                data = source.read_bytes()
            except DataSourceError as exc:  # nothing listens on port 9 here
                assert str(exc).startswith("data source s3://lake/churn.csv: cannot reach the S3 store")
            ```
        """
        uri = uri or self.uri
        bucket, key = _bucket_and_key(uri, what)
        with self._s3_errors(uri, what, action="read", bucket=bucket, key=key) as client:
            data = client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    def download_to(self, path: str | os.PathLike[str], uri: str | None = None, *, what: str = "data source",
                    chunk_bytes: int = 1 << 20) -> int:
        """Copy the S3 object at `uri` (this source's own `uri` by default) into the file `path`; return its size.

        The object is streamed in chunks of `chunk_bytes`: memory holds one chunk, however large
        the object. Failures are `DataSourceError`s naming `what` and the URI, as in `read_bytes`;
        the caller owns `path` and removes it on failure (`workspace.write_atomic` does).

        Example:
            ```python
            import tempfile
            from prefect_mlops.blocks import DataSource
            from prefect_mlops.errors import DataSourceError
            source = DataSource(uri="s3://lake/churn.csv", s3_endpoint_url="http://127.0.0.1:9",
                                aws_access_key_id="key", aws_secret_access_key="secret")
            try:
                source.download_to(f"{tempfile.mkdtemp()}/churn.csv")
            except DataSourceError as exc:  # nothing listens on port 9 here
                assert str(exc).startswith("data source s3://lake/churn.csv: cannot reach the S3 store")
            ```
        """
        uri = uri or self.uri
        bucket, key = _bucket_and_key(uri, what)
        size = 0
        with self._s3_errors(uri, what, action="read", bucket=bucket, key=key) as client, open(path, "wb") as out:
            body = client().get_object(Bucket=bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(chunk_size=chunk_bytes):
                    out.write(chunk)
                    size += len(chunk)
            finally:
                body.close()
        return size

    def write_bytes(self, data: bytes, uri: str | None = None, *, what: str = "output") -> str:
        """Put `data` as the S3 object at `uri` (this source's own `uri` by default) and return the URI.

        One PUT carries the whole object, so S3 stores all of it or nothing: a failed write leaves no
        partial object, and an existing object is replaced only by a complete one. Every failure is a
        `DataSourceError` (a `StorageError` when the store is full) naming `what`, the URI, the
        cause and the fix.

        Example:
            ```python
            from prefect_mlops.blocks import DataSource
            from prefect_mlops.errors import DataSourceError
            store = DataSource(uri="s3://lake/churn.csv", s3_endpoint_url="http://127.0.0.1:9",
                               aws_access_key_id="key", aws_secret_access_key="secret")
            try:
                store.write_bytes(b"id,score\\n1,0.5\\n", "s3://lake/scores.csv", what="batch scoring output")
            except DataSourceError as exc:  # nothing listens on port 9 here
                assert "batch scoring output s3://lake/scores.csv: cannot reach the S3 store" in str(exc)
                assert "nothing was written to s3://lake/scores.csv" in str(exc)
            ```
        """
        uri = uri or self.uri
        bucket, key = _bucket_and_key(uri, what)
        with self._s3_errors(uri, what, action="write", bucket=bucket, key=key) as client:
            client().put_object(Bucket=bucket, Key=key, Body=data)
        return uri

    def list_uris(self, prefix: str | None = None, *, what: str = "data source") -> list[str]:
        """The `s3://bucket/key` of every object under `prefix` (`s3://bucket/folder/`), in key order.

        Failures are `DataSourceError`s naming `what` and the prefix, as in `read_bytes`.

        Example:
            ```python
            from prefect_mlops.blocks import DataSource
            from prefect_mlops.errors import DataSourceError
            try:
                DataSource(uri="churn.csv").list_uris("/var/log/predictions", what="prediction log")
            except DataSourceError as exc:
                assert "prediction log /var/log/predictions: expected s3://<bucket>/<prefix>" in str(exc)
            ```
        """
        prefix = prefix or self.uri
        head, sep, folder = prefix.partition("://")
        if head.lower() != "s3" or not sep or not folder.partition("/")[0]:
            raise DataSourceError(f"{what} {prefix}: expected s3://<bucket>/<prefix>")
        bucket, _, key_prefix = folder.partition("/")
        with self._s3_errors(prefix, what, action="list", bucket=bucket, key=key_prefix) as client:
            pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
            found = [f"s3://{bucket}/{item['Key']}" for page in pages for item in page.get("Contents", [])]
        return found

    @contextmanager
    def _s3_errors(self, uri: str, what: str, *, action: Literal["read", "write", "list"], bucket: str,
                   key: str) -> Iterator[Any]:
        """Run one S3 call; turn every botocore failure into an error naming `what`, the URI, the cause and the fix.

        Yields the client factory: the client is made inside, so incomplete credentials and a
        malformed endpoint are explained like the store's own answers.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        left = f"; nothing was written to {uri}" if action == "write" else ""
        try:
            yield self.s3_client
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _STORE_FULL:
                raise StorageError(f"{what} {uri}: the S3 store is full ({code}); free space in the bucket "
                                   f"{bucket!r} or raise its quota, then retry{left}") from exc
            hint = _answer_hint(code, exc, action=action, bucket=bucket, key=key)
            raise DataSourceError(f"{what} {uri}: {hint}{left}") from exc
        except BotoCoreError as exc:
            raise DataSourceError(f"{what} {uri}: {self.explain_s3_failure(exc)}{left}") from exc
        except ValueError as exc:  # boto3's answer to an endpoint that is not a URL
            if "endpoint" not in str(exc).lower():
                raise
            raise DataSourceError(f"{what} {uri}: DataSource.s3_endpoint_url {brief(self.s3_endpoint_url)} is "
                                  f"not a URL ({exc}); give http(s)://host:port or leave it empty for AWS"
                                  f"{left}") from exc


# What S3-compatible stores answer when their disks (or the bucket's quota) are full:
# MinIO's own code, Ceph RGW's quota code, and the plain HTTP status.
_STORE_FULL = frozenset({"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage", "507"})


def _bucket_and_key(uri: str, what: str) -> tuple[str, str]:
    """`s3://bucket/key` split in two, or a `DataSourceError` naming `what` and the URI."""
    head, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if head.lower() != "s3" or not sep or not bucket or not key:
        raise DataSourceError(f"{what} {uri}: expected s3://<bucket>/<key>")
    return bucket, key


def _answer_hint(code: str, exc: Exception, *, action: str, bucket: str, key: str) -> str:
    """What the store's error code means for this call, and what to do."""
    permission = {"read": f"s3:GetObject on the object {key!r}", "write": f"s3:PutObject on the key {key!r}",
                  "list": f"s3:ListBucket on the bucket {bucket!r}"}[action]
    missing_bucket = f"bucket {bucket!r} does not exist; check the bucket name or the endpoint"
    hints = {
        "NoSuchBucket": missing_bucket + (", or create the bucket" if action == "write" else ""),
        "NoSuchKey": f"no object {key!r} in bucket {bucket!r}: not found (NoSuchKey); check the key",
        "InvalidAccessKeyId": "the access key id is not known to the store; fix the credentials",
        "SignatureDoesNotMatch": "the secret access key is wrong; fix the credentials",
        "AccessDenied": f"access denied; give these credentials {permission}",
        "403": f"access denied; check the credentials and their permissions ({permission})",
        "404": (f"no object {key!r} in bucket {bucket!r}: not found (404); check the key" if action == "read"
                else missing_bucket),
        "EntityTooLarge": "the object is larger than one PUT may carry (5 GiB); write a smaller file",
    }
    return hints.get(code, f"the store answered {code or exc}")
