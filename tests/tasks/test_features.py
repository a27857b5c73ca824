"""feature-build: spec checks, splits, and a transform that handles unseen categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from prefect_mlops.errors import FeatureError
from prefect_mlops.tasks.features import (
    FeatureSpec,
    build_feature_set,
    feature_build,
    load_holdout,
    load_split,
    make_transform,
    plain_dtypes,
)


@pytest.fixture
def frame():
    rng = np.random.default_rng(1)
    n = 200
    return pd.DataFrame({"t": pd.date_range("2024-01-01", periods=n, freq="h"), "x": rng.normal(size=n),
                         "c": rng.choice(["a", "b", "c"], n), "y": rng.integers(0, 2, n)})


SPEC = FeatureSpec(target="y", numeric=["x"], categorical=["c"])


def test_time_column_gives_the_latest_rows_as_holdout(frame, workspace):
    ref = workspace.write_snapshot(frame, name="f")
    features = build_feature_set(ref, SPEC.model_copy(update={"time_column": "t"}), workspace=workspace)
    train, holdout = load_split(features)
    assert (features.train_rows, features.holdout_rows) == (160, 40)
    assert train["t"].max() < holdout["t"].min()


def test_stratified_split_keeps_class_balance(frame, workspace):
    ref = workspace.write_snapshot(frame, name="f")
    train, holdout = load_split(feature_build.fn(ref, SPEC, workspace=str(workspace.root)))
    assert abs(train.y.mean() - holdout.y.mean()) < 0.05
    assert len(train) + len(holdout) == len(frame)


def test_transform_ignores_unseen_categories(frame):
    transform = make_transform(SPEC).fit(frame[SPEC.feature_columns])
    unseen = transform.transform(pd.DataFrame({"x": [0.0], "c": ["never-seen"]}))
    assert unseen.shape == (1, 4) and unseen[0, 1:].sum() == 0


@pytest.mark.parametrize(("change", "spec", "message"), [
    (lambda f: f.drop(columns="y"), SPEC, "target column 'y' is missing"),
    (lambda f: f.drop(columns="x"), SPEC, "numeric feature column 'x' is missing"),
    (lambda f: f.assign(x=["n/a"] * len(f)), SPEC, "numeric feature column 'x' holds object"),
    (lambda f: f.assign(x=np.nan), SPEC, "column 'x' is entirely empty"),
    (lambda f: f.assign(y=1), SPEC, "target 'y' has a single class"),
    (lambda f: f.assign(y=f.y.where(f.index > 3)), SPEC, "target 'y' has 4 empty values"),
])
def test_data_that_does_not_fit_the_spec_names_the_column(frame, workspace, change, spec, message):
    ref = workspace.write_snapshot(change(frame), name="f")
    with pytest.raises(FeatureError, match=message) as caught:
        build_feature_set(ref, spec, workspace=workspace)
    assert "dataset 'f'" in str(caught.value)


def test_spec_itself_is_checked_when_declared():
    with pytest.raises(ValidationError, match="both numeric and categorical"):
        FeatureSpec(target="y", numeric=["x"], categorical=["x"])
    with pytest.raises(ValidationError, match="at least one"):
        FeatureSpec(target="y")
    with pytest.raises(ValidationError, match="holdout_fraction"):
        FeatureSpec(target="y", numeric=["x"], holdout_fraction=1.5)


def test_spec_names_an_unknown_key_and_the_closest_valid_one():
    with pytest.raises(ValidationError, match="unknown key 'slice_col' \\(did you mean 'slice_column'\\?\\)"):
        FeatureSpec(target="y", numeric=["x"], slice_col="region")
    with pytest.raises(ValidationError, match="seed"):
        FeatureSpec(target="y", numeric=["x"], seed=-1)


def test_a_nested_feature_is_rejected_naming_the_column_and_its_type(workspace, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefect_mlops.blocks import DataSource
    from prefect_mlops.tasks.ingest import ingest_dataset

    n = 40
    pq.write_table(pa.table({"x": [float(i) for i in range(n)], "y": [i % 2 for i in range(n)],
                             "address": pa.array([{"city": "a", "zip": i} for i in range(n)]),
                             "tags": pa.array([["t"]] * n)}), tmp_path / "nested.parquet")
    ref = ingest_dataset(DataSource(uri=str(tmp_path / "nested.parquet")), workspace=workspace)
    assert build_feature_set(ref, FeatureSpec(target="y", numeric=["x"]), workspace=workspace).train_rows == 32
    with pytest.raises(FeatureError, match=r"categorical feature column 'address' is nested \(struct<city"):
        build_feature_set(ref, FeatureSpec(target="y", numeric=["x"], categorical=["address"]), workspace=workspace)


def test_nullable_extension_dtypes_train_and_hold_out_as_numpy(workspace):
    frame = pd.DataFrame({"x": pd.array([1.5, None] * 50, dtype="Float64"),
                          "n": pd.array([1, None, 3, 4] * 25, dtype="Int64"),
                          "c": pd.array(["a", None, "b", "c"] * 25, dtype="string"),
                          "b": pd.array([True, None, False, True] * 25, dtype="boolean"),
                          "y": [0, 1, 1, 0] * 25})
    spec = FeatureSpec(target="y", numeric=["x", "n"], categorical=["c", "b"])
    features = build_feature_set(workspace.write_snapshot(frame, name="nullable"), spec, workspace=workspace)
    train, holdout = load_split(features)
    for part in (train, holdout, load_holdout(features)):
        assert not any(isinstance(t, pd.api.extensions.ExtensionDtype) for t in part.dtypes), part.dtypes
    make_transform(spec).fit_transform(train[spec.feature_columns])  # pd.NA would raise here
    assert plain_dtypes(frame).c.isna().sum() == 25


def test_a_time_column_of_text_is_refused_naming_it(frame, workspace):
    ref = workspace.write_snapshot(frame.assign(t=frame.t.astype(str)), name="f")
    with pytest.raises(FeatureError, match="time column 't' holds object, expected timestamps"):
        build_feature_set(ref, SPEC.model_copy(update={"time_column": "t"}), workspace=workspace)


def test_unchanged_inputs_are_served_from_prefect_cache_and_a_lost_split_is_redone(frame, workspace):
    import os
    import shutil

    from prefect import flow

    ref = workspace.write_snapshot(frame, name="cached")

    @flow
    def twice():
        first = feature_build(ref, SPEC, workspace=str(workspace.root), return_state=True)
        second = feature_build(ref, SPEC, workspace=str(workspace.root), return_state=True)
        return first, second

    first, second = twice()
    assert second.name == "Cached" and second.result() == first.result()
    _, holdout = load_split(first.result())
    shutil.rmtree(os.path.dirname(first.result().holdout_index_uri))  # the workspace was cleaned
    _, again = load_split(second.result())
    assert again.equals(holdout)
