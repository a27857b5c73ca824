"""Every scikit-learn pipeline kind the project builds is saved with skops (no code runs at load) and loads back.

The torch network is saved with cloudpickle; tests/tasks/test_torch_trainer.py loads it back as pyfunc.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import yaml

from prefect_mlops import model_io
from prefect_mlops.blocks import MlflowServer
from prefect_mlops.tasks.features import FeatureSpec, make_transform
from prefect_mlops.tasks.lineage import TrainerSpec
from prefect_mlops.tasks.train import SKOPS_TRUSTED, _log_pipeline
from prefect_mlops.workspace import Workspace

SKOPS_ESTIMATORS = [
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.HistGradientBoostingRegressor",
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.SGDClassifier",
    "sklearn.svm.LinearSVC",
    "sklearn.tree.DecisionTreeClassifier",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.RandomForestRegressor",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.ensemble.GradientBoostingRegressor",
    "sklearn.dummy.DummyClassifier",
]


@pytest.fixture(params=["here", "in the model-files process"])
def where(request):
    """Each kind saved and loaded in this process, and again in the forked copy that a run starts."""
    model_io.stop()
    if request.param != "here" and not model_io.start():
        pytest.skip("no model-files process on this platform")
    return request.param


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[MlflowServer, Workspace]:
    """One MLflow store for the module: creating its database is most of a test's time."""
    folder = tmp_path_factory.mktemp("formats")
    return (MlflowServer(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
                         artifact_location=(folder / "mlartifacts").as_uri(), experiment="formats"),
            Workspace(folder / "workspace"))


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.integers(0, 9, size=200),
                          "c": rng.choice(["x", "y", "z"], size=200)})
    frame.loc[::17, "a"] = np.nan  # the imputers are part of every pipeline
    return frame


def log_and_load(estimator: str, rows: pd.DataFrame, store, where: str) -> tuple[object, object, dict]:
    from sklearn.base import is_regressor
    from sklearn.pipeline import Pipeline

    mlflow_server, workspace = store
    served = None if where == "here" else model_io._copy.served
    module, _, name = estimator.rpartition(".")
    model = getattr(importlib.import_module(module), name)()
    target = rows["b"] * 0.5 if is_regressor(model) else (rows["b"] > 4).astype(int)
    spec = FeatureSpec(target="t", numeric=["a", "b"], categorical=["c"])
    pipeline = Pipeline([("features", make_transform(spec)), ("model", model)]).fit(rows, target)
    client = mlflow_server.client(workspace)
    run = client.create_run(mlflow_server.experiment_id(workspace))
    digest, _ = _log_pipeline(client, run.info.run_id, pipeline, rows.head(5), TrainerSpec(estimator=estimator),
                              artifact_path="model")
    source = f"{run.info.artifact_uri}/model"
    loaded = mlflow_server.load_model(source, workspace, flavor="pyfunc", sha256=digest)
    with open(f"{source.removeprefix('file://')}/MLmodel") as handle:
        flavor = yaml.safe_load(handle)["flavors"]["sklearn"]
    if served is not None:  # the save, and the load of a skops model, were the copy's
        assert model_io._copy.served == served + (2 if flavor["serialization_format"] == "skops" else 1)
    return pipeline, loaded, flavor


@pytest.mark.parametrize("estimator", SKOPS_ESTIMATORS, ids=lambda e: e.rsplit(".", 1)[1])
def test_each_pipeline_kind_is_saved_with_skops_and_predicts_as_pyfunc(estimator, rows, store, where):
    pipeline, loaded, flavor = log_and_load(estimator, rows, store, where)
    assert flavor["serialization_format"] == "skops"
    assert set(flavor["skops_trusted_types"]) == set(SKOPS_TRUSTED)
    np.testing.assert_allclose(np.asarray(loaded.predict(rows)), pipeline.predict(rows))


def test_a_pipeline_skops_cannot_trust_falls_back_to_cloudpickle(rows, store, where, caplog):
    pipeline, loaded, flavor = log_and_load("sklearn.neighbors.KNeighborsClassifier", rows, store, where)
    assert flavor["serialization_format"] == "cloudpickle"
    np.testing.assert_array_equal(np.asarray(loaded.predict(rows)), pipeline.predict(rows))
    assert "skops cannot save sklearn.neighbors.KNeighborsClassifier" in caplog.text  # said here, wherever saved
