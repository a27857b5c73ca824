"""Small, serialisable records that stages exchange instead of data frames.

A stage hands the next one a reference to an Arrow IPC snapshot (with a content
fingerprint) or to an MLflow model, never the data itself, so any stage can run
in another process or on another work pool, and Prefect can cache on fingerprints.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from prefect_mlops.errors import ConfigError, brief

_NAME_FORBIDDEN = {"@": "an alias", "/": "a version", ":": "a URI scheme"}


def check_model_name(name: str) -> str:
    """Return `name` if MLflow can address it as `models:/<name>@<alias>`; else raise `ValueError`.

    Example:
        ```python
        from prefect_mlops.refs import check_model_name
        assert check_model_name("churn") == "churn"
        ```
    """
    syntax = ("MLflow addresses a model as models:/<name>@<alias> or models:/<name>/<version>, so a name "
              "cannot hold '@', '/' or ':'. Use letters, digits, '-', '_' or '.', e.g. 'churn'")
    if not name or not name.strip():
        raise ValueError(f"model_name is empty; name the registered model. {syntax}")
    if name != name.strip():
        raise ValueError(f"model_name {brief(name)} starts or ends with spaces; remove them")
    for char, meaning in _NAME_FORBIDDEN.items():
        if char in name:
            raise ValueError(f"model_name {brief(name)} holds {char!r}, which in a models:/ URI starts "
                             f"{meaning}. {syntax}")
    if any(not ch.isprintable() for ch in name) or len(name) > 256:
        raise ValueError(f"model_name {brief(name)}: expected at most 256 printable characters. {syntax}")
    return name


ModelName = Annotated[str, AfterValidator(check_model_name)]
"""A registered model name, checked when a flow's parameters are validated (see `check_model_name`)."""

_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


def check_alias(alias: str) -> str:
    """Return `alias` if MLflow accepts it as a model alias; else raise `ValueError`.

    Example:
        ```python
        from prefect_mlops.refs import check_alias
        assert check_alias("champion") == "champion"
        ```
    """
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"alias {brief(alias)}: expected letters, digits, '_' or '-' (not 'latest' nor a version "
                         "such as 'v3'), e.g. 'champion', as in models:/<name>@<alias>")
    return alias


ModelAlias = Annotated[str, AfterValidator(check_alias)]
"""A model alias (`champion`, `challenger`...), checked at parameter validation (see `check_alias`)."""

# An optional flow parameter shown in the Prefect UI as a plain input. For `X | None` the form opens on the
# `null` branch of its `anyOf` ("Property is type None") and a person must pick the other tab to type a value;
# with the schema of `X` alone an empty input leaves the parameter out, which is the default None.
OptionalText = Annotated[str | None, WithJsonSchema({"type": "string"})]
"""Text that may be left empty (None): a path, a window, a folder."""
OptionalInt = Annotated[int | None, WithJsonSchema({"type": "integer"})]
"""A whole number that may be left empty (None)."""
OptionalFloat = Annotated[float | None, WithJsonSchema({"type": "number"})]
"""A number that may be left empty (None)."""
OptionalObject = Annotated[dict[str, Any] | None, WithJsonSchema({"type": "object"})]
"""A JSON object that may be left empty (None)."""


def reject_unknown_keys(model: type[BaseModel], data: Any, *, also: Iterable[str] = (), hint: str = "") -> Any:
    """Raise `ValueError` naming every key of `data` that is no field of `model`, with the closest field.

    Keys in `also` and keys starting with `_` (Prefect's Block metadata) are let through.

    Example:
        ```python
        import pytest
        from prefect_mlops.refs import Window, reject_unknown_keys
        with pytest.raises(ValueError, match="did you mean 'start'"):
            reject_unknown_keys(Window, {"stat": "2024-01-01"})
        ```
    """
    if not isinstance(data, dict):
        return data
    fields = {name for name, info in model.model_fields.items()} | {
        info.alias for info in model.model_fields.values() if info.alias}
    allowed = fields | set(also)
    unknown = [key for key in data if key not in allowed and not (isinstance(key, str) and key.startswith("_"))]
    if not unknown:
        return data
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.6)
        problems.append(f"{brief(key)} (did you mean {close[0]!r}?)" if close else brief(key))
    what = "unknown key" if len(unknown) == 1 else "unknown keys"
    raise ValueError(f"{model.__name__}: {what} {', '.join(problems)}; valid keys are "
                     f"{', '.join(sorted(fields))}{hint}")


def number_fields(schema: dict[str, Any]) -> None:
    """Give each property its declaration order as `position`, which the Prefect UI sorts a form by.

    Without it a nested model's fields come out in the order a server's JSON column keeps keys
    (PostgreSQL's JSONB: shortest first), so `seed` came before `target`.

    Example:
        ```python
        from prefect_mlops.refs import number_fields
        schema = {"properties": {"target": {}, "seed": {}}}
        number_fields(schema)
        assert schema["properties"]["seed"]["position"] == 1
        ```
    """
    for position, spec in enumerate(schema.get("properties", {}).values()):
        spec.setdefault("position", position)


class StrictModel(BaseModel):
    """A record a person writes: an unknown key is an error naming the closest valid key, never ignored."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, cls: number_fields(schema))
    _unknown_key_hint: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return reject_unknown_keys(cls, data, hint=cls._unknown_key_hint)


class Window(StrictModel):
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
        # A bound with an offset is an instant: kept as naive UTC, the time ingest compares rows in.
        start, end = (_naive_utc(moment) for moment in (start, end))
        if start and end and start >= end:
            raise ConfigError(f"window {text!r}: start must be before end")
        return cls(start=start, end=end)

    def __str__(self) -> str:
        return f"{self.start.isoformat() if self.start else ''}/{self.end.isoformat() if self.end else ''}"


def _naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


class DatasetRef(BaseModel):
    """A snapshot (an Arrow IPC file; Parquet for older ones) in the run workspace, identified by its content.

    `fingerprint` hashes the data's values, column names and types, not the file's
    bytes: re-writing the same data gives the same fingerprint.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Dataset name, used in messages and file names.")
    uri: str = Field(description="Where the snapshot lies (.arrow; .parquet for snapshots written before Arrow IPC).")
    fingerprint: str = Field(description="SHA-256 of the data's values, column names and types.")
    rows: int = Field(description="Number of rows.")
    columns: dict[str, str] = Field(description="Column name to pandas dtype.")
    source_uri: str | None = Field(default=None, description="Where the data was read from.")
    window: str | None = Field(default=None, description="Time window the snapshot was cut to.")
    dropped_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Nested columns (struct, list, map) left out of the snapshot, with their Arrow types.",
    )

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
