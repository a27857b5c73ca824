"""Feature-build: check the data against the feature spec, split train and hold-out, define the transform.

The transform (impute, scale, one-hot) is a scikit-learn `ColumnTransformer` that the
trainer fits inside the model's pipeline, so serving and batch scoring apply exactly
the transform used in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefect_mlops.errors import FeatureError
from prefect_mlops.log import brief, run_logger
from prefect_mlops.refs import DatasetRef, OptionalText, StrictModel
from prefect_mlops.workspace import Workspace, read_frame, read_table

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pandas as pd
    from sklearn.compose import ColumnTransformer


class FeatureSpec(StrictModel):
    """Which columns are features, which is the target, and how to split.

    Example:
        ```python
        from prefect_mlops.tasks.features import FeatureSpec
        spec = FeatureSpec(target="churned", numeric=["tenure"], categorical=["plan"])
        assert spec.feature_columns == ["tenure", "plan"]
        ```
    """

    model_config = ConfigDict(frozen=True)

    target: str = Field(description="Column the model predicts.")
    numeric: list[str] = Field(default_factory=list, description="Numeric feature columns (imputed, scaled).")
    categorical: list[str] = Field(
        default_factory=list, description="Categorical feature columns (one-hot; unseen values ignored)."
    )
    task: Literal["classification", "regression"] = Field(
        default="classification", description="What kind of target this is."
    )
    time_column: OptionalText = Field(
        default=None, description="If set, the hold-out is the latest rows by this column."
    )
    slice_column: OptionalText = Field(
        default=None, description="Column whose values are the slices reported and gated separately."
    )
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of rows held out.")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of the split (0 to 2**32 - 1).")

    @model_validator(mode="after")
    def _some_features(self) -> FeatureSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("feature spec: list at least one numeric or categorical column")
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"feature spec: columns {sorted(overlap)} are both numeric and categorical")
        if self.target in self.numeric or self.target in self.categorical:
            raise ValueError(f"feature spec: target {self.target!r} is also listed as a feature")
        return self

    @property
    def feature_columns(self) -> list[str]:
        """Numeric then categorical feature columns: the model's input."""
        return [*self.numeric, *self.categorical]


class FeatureSet(BaseModel):
    """A dataset checked against a spec, and which rows are held out."""

    model_config = ConfigDict(frozen=True)

    dataset: DatasetRef
    spec: FeatureSpec
    holdout_index_uri: str = Field(description="A .npy file of the hold-out's row positions.")
    train_rows: int
    holdout_rows: int


def _roles(spec: FeatureSpec) -> list[tuple[str, str]]:
    """(role, column) for every column the spec names, the target first."""
    roles = [("target", spec.target), *(("numeric feature", c) for c in spec.numeric),
             *(("categorical feature", c) for c in spec.categorical)]
    roles += [(f"{field.replace('_', ' ')}", column) for field, column in
              (("time_column", spec.time_column), ("slice_column", spec.slice_column)) if column]
    return roles


def check_columns(dataset: DatasetRef, spec: FeatureSpec) -> None:
    """Raise a `FeatureError` when a column the spec names is missing or nested; reads no data.

    Cheap enough to run straight after ingest, before validation, so a missing target is
    reported as a missing target and not as a failed expectation.

    Example:
        ```python
        import tempfile, pandas as pd, pytest
        from prefect_mlops.errors import FeatureError
        from prefect_mlops.tasks.features import FeatureSpec, check_columns
        from prefect_mlops.workspace import Workspace
        ref = Workspace(tempfile.mkdtemp()).write_snapshot(pd.DataFrame({"x": [1, 2]}), name="toy")
        with pytest.raises(FeatureError, match="target column 'y' is missing"):
            check_columns(ref, FeatureSpec(target="y", numeric=["x"]))
        ```
    """
    for role, column in _roles(spec):
        if column in dataset.dropped_columns:
            raise FeatureError(
                f"dataset {dataset.name!r}: {role} column {brief(column)} is nested "
                f"({shorten_type(dataset.dropped_columns[column])}); features, the target, time and slice "
                "columns must hold one number, category or timestamp per row. Flatten it into plain "
                "columns (e.g. one per struct field) or drop it from the feature spec"
            )
        if column not in dataset.columns:
            raise FeatureError(
                f"dataset {dataset.name!r}: {role} column {brief(column)} is missing; columns are "
                f"{brief(sorted(dataset.columns), 2000)}. Fix the feature spec or the data"
            )


def shorten_type(arrow_type: str, limit: int = 120) -> str:
    """An Arrow type's text, cut to `limit` characters (a struct's type lists all its fields)."""
    return arrow_type if len(arrow_type) <= limit else f"{arrow_type[:limit]}...>"


def plain_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with pandas' nullable extension columns turned into NumPy ones, `pd.NA` into NaN/None.

    scikit-learn's imputers test missing values with `x != x`, which `pd.NA` refuses ("boolean
    value of NA is ambiguous"); `string`, `boolean`, `Int64`, `Float64` and the Arrow-backed
    dtypes all carry it. Integers without gaps stay integers; with gaps they become floats,
    as pandas reads them from Parquet without the extension types.

    Example:
        ```python
        import pandas as pd
        from prefect_mlops.tasks.features import plain_dtypes
        frame = plain_dtypes(pd.DataFrame({"s": pd.array(["a", None], dtype="string"),
                                           "i": pd.array([1, None], dtype="Int64")}))
        assert str(frame.s.dtype) == "object" and str(frame.i.dtype) == "float64"
        ```
    """
    import pandas as pd

    changed = {}
    for column, dtype in frame.dtypes.items():
        if not isinstance(dtype, pd.api.extensions.ExtensionDtype) or isinstance(
                dtype, (pd.CategoricalDtype, pd.DatetimeTZDtype, pd.PeriodDtype, pd.IntervalDtype,
                        pd.SparseDtype)):
            continue
        series = frame[column]
        gaps = bool(series.isna().any())
        if pd.api.types.is_bool_dtype(dtype):
            values = series.to_numpy(dtype=object, na_value=None) if gaps else series.to_numpy(dtype=bool)
        elif pd.api.types.is_integer_dtype(dtype) and not gaps:
            values = series.to_numpy(dtype=getattr(dtype, "numpy_dtype", np.dtype("int64")))
        elif pd.api.types.is_numeric_dtype(dtype):
            values = series.to_numpy(dtype="float64", na_value=np.nan)
        elif pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            continue  # Arrow-backed timestamps: scikit-learn never sees them, pandas handles NaT
        else:
            values = series.to_numpy(dtype=object, na_value=None)
        changed[column] = pd.Series(values, index=frame.index, name=column)
    if not changed:
        return frame
    frame = frame.copy(deep=False)  # the caller's frame keeps its dtypes; untouched columns are shared
    for column, series in changed.items():
        frame[column] = series
    return frame


def check_features(frame: pd.DataFrame, spec: FeatureSpec, *, dataset: str) -> None:
    """Raise a `FeatureError` naming the first column that does not fit the spec."""
    import pandas as pd

    for role, column in _roles(spec):
        if column not in frame.columns:
            raise FeatureError(
                f"dataset {dataset!r}: {role} column {brief(column)} is missing; columns are "
                f"{brief(sorted(map(str, frame.columns)), 2000)}. Fix the feature spec or the data"
            )
    for column in spec.numeric:
        series = frame[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise FeatureError(
                f"dataset {dataset!r}: numeric feature column {column!r} holds {series.dtype}, expected "
                "numbers; clean the column or list it as categorical"
            )
    for column in [*spec.feature_columns, spec.target]:
        if frame[column].isna().all():
            raise FeatureError(
                f"dataset {dataset!r}: column {column!r} is entirely empty (all NaN); fix the source "
                "or drop it from the feature spec"
            )
    target = frame[spec.target]
    if target.isna().any():
        raise FeatureError(
            f"dataset {dataset!r}: target {spec.target!r} has {int(target.isna().sum())} empty values; "
            "drop or label those rows"
        )
    if spec.task == "classification" and target.nunique() < 2:
        raise FeatureError(
            f"dataset {dataset!r}: target {spec.target!r} has a single class ({target.iloc[0]!r}); "
            "a classifier needs at least two. Widen the window or check the labels"
        )
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise FeatureError(
            f"dataset {dataset!r}: regression target {spec.target!r} holds {target.dtype}, expected numbers"
        )
    if spec.time_column:
        times = frame[spec.time_column]
        if not (pd.api.types.is_datetime64_any_dtype(times) or pd.api.types.is_numeric_dtype(times)):
            raise FeatureError(
                f"dataset {dataset!r}: time column {spec.time_column!r} holds {times.dtype}, expected "
                "timestamps (or numbers) to order the rows by; convert it, or set DataSource.time_column "
                "so ingest reads it as timestamps"
            )


def holdout_positions(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Row positions of the hold-out: the latest rows by time, else a stratified (or random) sample."""
    rows = len(frame)
    size = max(1, round(rows * spec.holdout_fraction))
    if spec.time_column:
        order = np.argsort(frame[spec.time_column].to_numpy(), kind="stable")
        return np.sort(order[rows - size:])
    from sklearn.model_selection import train_test_split

    stratify = frame[spec.target] if spec.task == "classification" else None
    if stratify is not None and stratify.value_counts().min() < 2:
        stratify = None  # a class with one row cannot be stratified; fall back to a random split
    _, holdout = train_test_split(np.arange(rows), test_size=size, random_state=spec.seed, stratify=stratify)
    return np.sort(holdout)


def build_feature_set(dataset: DatasetRef, spec: FeatureSpec, *, workspace: Workspace | None = None) -> FeatureSet:
    """Check `dataset` against `spec` and choose the hold-out rows.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        ref = ws.write_snapshot(pd.DataFrame({"x": range(10), "y": [0, 1] * 5}), name="toy")
        fs = build_feature_set(ref, FeatureSpec(target="y", numeric=["x"]), workspace=ws)
        assert (fs.train_rows, fs.holdout_rows) == (8, 2)
        ```
    """
    workspace = workspace or Workspace()
    columns = list(dict.fromkeys([*spec.feature_columns, spec.target, *(c for c in (spec.time_column,
                                  spec.slice_column) if c)]))
    check_columns(dataset, spec)
    frame, spec_left = _checked_frame(dataset, spec, columns)
    check_features(frame, spec_left, dataset=dataset.name)
    holdout = holdout_positions(frame, spec)
    if len(holdout) >= len(frame):
        raise FeatureError(f"dataset {dataset.name!r}: {len(frame)} rows are too few to hold any out")
    path = split_path(workspace, dataset, spec)
    if not path.exists():
        np.save(path, holdout)
    return FeatureSet(dataset=dataset, spec=spec, holdout_index_uri=str(path),
                      train_rows=len(frame) - len(holdout), holdout_rows=len(holdout))


def _checked_frame(dataset: DatasetRef, spec: FeatureSpec, columns: list[str]) -> tuple[pd.DataFrame, FeatureSpec]:
    """The columns feature-build needs in pandas, and the spec `check_features` is left to check on them.

    Categorical features held as text stay in Arrow: the one check they need (not entirely empty)
    is their null count, and turning millions of strings into Python objects is most of the cost.
    """
    import pyarrow as pa

    table = read_table(dataset, columns=columns)
    text = [c for c in spec.categorical if c not in (spec.target, spec.time_column, spec.slice_column)
            and (pa.types.is_string(kind := table.schema.field(c).type) or pa.types.is_large_string(kind)
                 or pa.types.is_dictionary(kind))]
    for column in text:
        if table.column(column).null_count == table.num_rows:
            raise FeatureError(
                f"dataset {dataset.name!r}: column {column!r} is entirely empty (all NaN); fix the source "
                "or drop it from the feature spec"
            )
    frame = plain_dtypes(table.drop_columns(text).to_pandas())
    categorical = [c for c in spec.categorical if c not in text]
    # model_copy: the spec was validated already; without its text columns it may list no feature at all.
    return frame, spec.model_copy(update={"categorical": categorical})


def load_split(features: FeatureSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and hold-out frames of a feature set."""
    import pandas as pd

    frame = plain_dtypes(read_frame(features.dataset))
    mask = np.zeros(len(frame), dtype=bool)
    mask[_holdout(features, lambda: frame)] = True
    # One copy of each part (`reset_index` would copy them again), and the index renumbered in place.
    holdout, train = frame.take(np.flatnonzero(mask)), frame.take(np.flatnonzero(~mask))
    for part in (train, holdout):
        part.index = pd.RangeIndex(len(part))
    return train, holdout


def load_holdout(features: FeatureSet, columns: list[str] | None = None) -> pd.DataFrame:
    """The hold-out frame alone (`load_split(features)[1]`, or its `columns`), without building the train part.

    The rows are picked in Arrow before the pandas conversion; a column whose nulls made the whole
    column a float (integers) or object (booleans) keeps that dtype when the hold-out has no null.
    """
    import pandas as pd
    import pyarrow as pa

    table = read_table(features.dataset, columns=columns)
    rows = _holdout(features, lambda: read_frame(features.dataset))
    # The dtypes pandas gives the whole columns: the schema's own (pandas metadata included), then
    # numpy integers and booleans that hold a null become float64 and object.
    whole = dict(table.schema.empty_table().to_pandas().dtypes.items())
    widened = {}
    for name in table.column_names:
        dtype = whole.get(name)
        if table.column(name).null_count and isinstance(dtype, np.dtype) and dtype.kind in "iub":
            widened[name] = np.dtype(object) if dtype.kind == "b" else np.dtype("float64")
    holdout = table.take(pa.array(rows)).to_pandas()
    del table
    for name, dtype in widened.items():
        if name in holdout.columns and holdout[name].dtype != dtype:
            holdout[name] = holdout[name].astype(dtype)
    holdout = plain_dtypes(holdout)
    holdout.index = pd.RangeIndex(len(holdout))
    return holdout


def _holdout(features: FeatureSet, frame: Callable[[], pd.DataFrame]) -> np.ndarray:
    """The saved hold-out row positions; recomputed (deterministically) from `frame()` if the file is gone."""
    try:
        return np.load(features.holdout_index_uri)
    except FileNotFoundError:
        # A cached feature set whose split file was cleaned away: the split is deterministic, redo it.
        holdout = holdout_positions(frame(), features.spec)
        Path(features.holdout_index_uri).parent.mkdir(parents=True, exist_ok=True)
        np.save(features.holdout_index_uri, holdout)
        return holdout


def make_transform(spec: FeatureSpec) -> ColumnTransformer:
    """The unfitted feature transform: median-impute and scale numbers, one-hot categories."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if spec.numeric:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), spec.numeric))
    if spec.categorical:
        parts.append((
            "categorical",
            make_pipeline(
                SimpleImputer(strategy="constant", fill_value="__missing__"),
                # Dense output: HistGradientBoosting and torch reject sparse input.
                OneHotEncoder(handle_unknown="ignore", sparse_output=False, max_categories=100),
            ),
            spec.categorical,
        ))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def split_path(workspace: Workspace, dataset: DatasetRef, spec: FeatureSpec) -> Path:
    """Where the hold-out rows of `dataset` under `spec` are saved."""
    return workspace.folder("splits") / f"{dataset.fingerprint[:24]}-{_spec_digest(spec)}.npy"


def _spec_digest(spec: FeatureSpec) -> str:
    import hashlib

    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:12]


def _cache_key(context: object, parameters: dict) -> str:
    """Same data fingerprint and same spec: the checks and the split would come out the same."""
    import hashlib

    dataset = parameters["dataset"]  # its URI ties the key to one workspace's snapshot
    where = hashlib.sha256(dataset.uri.encode()).hexdigest()[:12]
    return f"feature-build-{where}-{dataset.fingerprint[:32]}-{_spec_digest(parameters['spec'])}"


@task(name="feature-build", task_run_name="features-{dataset.name}", cache_key_fn=_cache_key,
      persist_result=True)
def feature_build(dataset: DatasetRef, spec: FeatureSpec, workspace: str | None = None) -> FeatureSet:
    """Check a dataset against its feature spec and split it (see `build_feature_set`)."""
    features = build_feature_set(dataset, spec, workspace=Workspace(workspace))
    run_logger().info(
        "%s: %s features, %s train rows, %s hold-out rows (%s split)", dataset.short(),
        len(spec.feature_columns), features.train_rows, features.holdout_rows,
        "time-ordered" if spec.time_column else "stratified" if spec.task == "classification" else "random",
    )
    return features
