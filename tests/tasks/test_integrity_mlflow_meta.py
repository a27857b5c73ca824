"""MLflow's own `registered_model_meta`, written into a local model folder by a `models:/` load, is not tampering."""

from __future__ import annotations

import mlflow.artifacts
import pytest

from prefect_mlops.errors import IntegrityError
from prefect_mlops.integrity import MLFLOW_META
from tests.tasks.test_integrity import model_folder


def test_a_models_uri_load_by_mlflow_on_the_same_store_leaves_our_loads_working(first, mlflow_server,
                                                                                  workspace, monkeypatch):
    folder = model_folder(mlflow_server, workspace, "1")
    uri = mlflow_server.uri(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what `mlflow models serve -m models:/churn/1` runs with
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    got = mlflow.artifacts.download_artifacts(artifact_uri="models:/churn/1", tracking_uri=uri)
    assert (folder / MLFLOW_META).is_file(), f"MLflow wrote no {MLFLOW_META} into {folder} (it returned {got})"
    assert hasattr(mlflow_server.load_model(first.trained.model_source, workspace), "predict_proba")

    (folder / "sitecustomize.py").write_text("print('anything else is still refused')")
    with pytest.raises(IntegrityError, match=r"files \['sitecustomize.py'\] .* were not there at registration"):
        mlflow_server.load_model(first.trained.model_source, workspace)
    (folder / "sitecustomize.py").unlink()
    (folder / "nested").mkdir()
    (folder / "nested" / MLFLOW_META).write_text("model_name: churn\n")
    with pytest.raises(IntegrityError, match=rf"files \['nested/{MLFLOW_META}'\]"):
        mlflow_server.load_model(first.trained.model_source, workspace)
