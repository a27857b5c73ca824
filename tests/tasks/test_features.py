"""feature-build: spec checks, splits, and a transform that handles unseen categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from prefect_mlops.errors import FeatureError
from prefect_mlops.tasks.features import FeatureSpec, build_feature_set, feature_build, load_split, make_transform


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
    (lambda f: f.drop(columns="y"), SPEC, "column 'y' named by the feature spec is missing"),
    (lambda f: f.drop(columns="x"), SPEC, "column 'x' named by the feature spec is missing"),
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
