"""Small, serialisable records that stages exchange instead of data frames.

A stage hands the next one a reference to a Parquet snapshot (with a content
fingerprint) or to an MLflow model, never the data itself, so any stage can run
in another process or on another work pool, and Prefect can cache on fingerprints.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.errors import ConfigError


class Window(BaseModel):
    """A half-open time window `[start, end)` on a dataset's time column.

    Example:
        ```python
        from prefect_mlops.refs import Window
        w = Window.parse("2024-01-01/2024-02-01")
        assert str(w) == "2024-01-01T00:00:00/2024-02-01T00:00:00"
        ```
    """

    model_config = ConfigDict(frozen=True)

    start: datetime | None = Field(default=None, description="First instant included; open when empty.")
    end: datetime | None = Field(default=None, description="First instant excluded; open when empty.")

    @classmethod
    def parse(cls, text: str | Window | None) -> Window | None:
        """Read an ISO-8601 interval `start/end` (either side may be empty, `latest` means none)."""
        if text is None or isinstance(text, Window):
            return text
        text = text.strip()
        if text in ("", "latest", "all"):
            return None
        if "/" not in text:
            raise ConfigError(
                f"window {text!r}: expected an ISO-8601 interval 'start/end' such as "
                "'2024-01-01/2024-02-01' (either side may be empty), or 'latest'"
            )
        start_text, end_text = (part.strip() for part in text.split("/", 1))
        try:
            start = datetime.fromisoformat(start_text) if start_text else None
            end = datetime.fromisoformat(end_text) if end_text else None
        except ValueError as exc:
            raise ConfigError(f"window {text!r}: {exc}; write dates as ISO-8601, e.g. 2024-01-31") from exc
        if start and end and start >= end:
            raise ConfigError(f"window {text!r}: start must be before end")
        return cls(start=start, end=end)

    def __str__(self) -> str:
        return f"{self.start.isoformat() if self.start else ''}/{self.end.isoformat() if self.end else ''}"


class DatasetRef(BaseModel):
    """A Parquet snapshot in the run workspace, identified by its content.

    `fingerprint` hashes the data's values, column names and types, not the file's
    bytes: re-writing the same data gives the same fingerprint.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Dataset name, used in messages and file names.")
    uri: str = Field(description="Where the Parquet snapshot lies.")
    fingerprint: str = Field(description="SHA-256 of the data's values, column names and types.")
    rows: int = Field(description="Number of rows.")
    columns: dict[str, str] = Field(description="Column name to pandas dtype.")
    source_uri: str | None = Field(default=None, description="Where the data was read from.")
    window: str | None = Field(default=None, description="Time window the snapshot was cut to.")

    def short(self) -> str:
        """A short label: name and the first characters of the fingerprint."""
        return f"{self.name}@{self.fingerprint[:12]}"


class ModelRef(BaseModel):
    """A model version in the MLflow registry."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registered model version.")
    run_id: str = Field(description="MLflow run that produced it.")
    source: str = Field(description="Artifact location of the logged model.")

    @property
    def uri(self) -> str:
        """`models:/<name>/<version>`."""
        return f"models:/{self.name}/{self.version}"


_ARTIFACT_KEY = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from free text.

    Example:
        ```python
        from prefect_mlops.refs import artifact_key
        assert artifact_key("gate", "Churn_Model") == "gate-churn-model"
        ```
    """
    return _ARTIFACT_KEY.sub("-", "-".join(parts).lower()).strip("-")[:200]
