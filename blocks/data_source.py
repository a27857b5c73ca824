"""Where a model's data comes from: a local path or an S3 (or S3-compatible) object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

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
