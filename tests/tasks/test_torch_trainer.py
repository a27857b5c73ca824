"""The torch trainer: a scikit-learn-compatible network that trains reproducibly, stops early, resumes
from its checkpoints, fails loudly on divergence, and goes through MLflow and the whole flow like any model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from prefect_mlops.demo import period_window
from prefect_mlops.errors import ConfigError, TrainingError
from prefect_mlops.flows import continuous_training
from prefect_mlops.tasks.features import build_feature_set, load_split
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.lineage import Lineage, TrainerSpec, recipe_digest
from prefect_mlops.tasks.torch_trainer import TabularNetEstimator, TorchConfig
from prefect_mlops.tasks.train import build_estimator, checkpoint_key, fit_pipeline, log_model, train_model

SMALL = {"hidden_layers": [32, 16], "epochs": 15, "patience": 3, "batch_size": 128, "learning_rate": 3e-3}


def toy_data(rows: int = 3000, seed: int = 0, labels: tuple[str, str] = ("no", "yes")) -> tuple[np.ndarray, np.ndarray]:
    """A non-linear binary problem with string labels: what a transform's output and a target look like."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    signal = x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.4 * rng.normal(size=rows)
    return x, np.where(signal > 0, labels[1], labels[0])


def churn_features_set(churn_source, churn_features, workspace, window):
    dataset = ingest_dataset(churn_source, name="churn", window=window, workspace=workspace)
    return build_feature_set(dataset, churn_features, workspace=workspace)


# -- the estimator ----------------------------------------------------------------------------------------


def test_importing_the_trainer_or_train_does_not_import_torch():
    code = ("import sys, prefect_mlops.tasks.torch_trainer, prefect_mlops.tasks.train; "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_kind_torch_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees where it is not installed
    with pytest.raises(TrainingError,
                       match=r"trainer kind 'torch' needs PyTorch.*pip install 'prefect-mlops\[torch\]'"):
        build_estimator(TrainerSpec(kind="torch"))
    x, y = toy_data(50)
    with pytest.raises(TrainingError, match=r"needs PyTorch.*prefect-mlops\[torch\]"):
        TabularNetEstimator(epochs=1).fit(x, y)


def test_trainer_spec_params_become_estimator_params_and_bad_ones_are_named():
    assert TabularNetEstimator().config() == TorchConfig()  # the estimator's defaults are the config's
    estimator = build_estimator(TrainerSpec(kind="torch", params={"hidden_layers": [16], "optimizer": "sgd"},
                                            seed=9))
    assert (estimator.seed, estimator.config().hidden_layers, estimator.optimizer) == (9, (16,), "sgd")
    with pytest.raises(ConfigError, match=r"optimizer: Input should be 'adam', 'adamw' or 'sgd' \(got 'rmsprop'\)"):
        build_estimator(TrainerSpec(kind="torch", params={"optimizer": "rmsprop"}))
    with pytest.raises(ConfigError, match=r"\['hiden_layers'\] are not parameters of the torch trainer"):
        build_estimator(TrainerSpec(kind="torch", params={"hiden_layers": [8]}))
    with pytest.raises(ConfigError, match=r"dropout: Input should be less than 1"):
        build_estimator(TrainerSpec(kind="torch", params={"dropout": 1.5}))


def test_two_cpu_fits_with_the_same_seed_predict_identically():
    x, y = toy_data()
    params = {**SMALL, "epochs": 6, "device": "auto"}
    first = TabularNetEstimator(**params, seed=3).fit(x, y)
    second = TabularNetEstimator(**params, seed=3).fit(x, y)
    other = TabularNetEstimator(**params, seed=4).fit(x, y)

    assert (first.device_, first.amp_) == ("cpu", False)  # 'auto' took what exists; no AMP on CPU
    assert list(first.classes_) == ["no", "yes"] and set(first.predict(x)) <= {"no", "yes"}
    proba = first.predict_proba(x)
    assert proba.shape == (len(x), 2) and np.allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(proba, second.predict_proba(x))
    assert [h["val_loss"] for h in first.history_] == [h["val_loss"] for h in second.history_]
    assert not np.array_equal(proba, other.predict_proba(x))
    assert (first.predict(x) == y).mean() > 0.75


def test_regression_standardises_the_target_and_predicts_in_its_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 4))
    y = 1000 + 300 * x[:, 0] + 80 * x[:, 1] ** 2 + 10 * rng.normal(size=2000)
    net = TabularNetEstimator(task="auto", hidden_layers=[32], epochs=40, patience=5, learning_rate=1e-2,
                              seed=0).fit(x, y)
    predicted = net.predict(x)
    assert net.task_ == "regression" and not hasattr(net, "predict_proba") and not hasattr(net, "classes_")
    assert net.target_mean_ == pytest.approx(y.mean()) and net.target_std_ == pytest.approx(y.std())
    assert 1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.95


def test_early_stopping_keeps_the_best_epochs_weights():
    x, y = toy_data(rows=400, seed=2)  # few rows and a wide net: it overfits within a few epochs
    params = {"hidden_layers": [256, 256], "dropout": 0.0, "learning_rate": 1e-2, "patience": 3, "seed": 0}
    stopped = TabularNetEstimator(**params, epochs=200).fit(x, y)
    val = [h["val_loss"] for h in stopped.history_]

    assert stopped.n_epochs_ < 200 and stopped.n_epochs_ - stopped.best_epoch_ == 3
    assert stopped.best_epoch_ == int(np.argmin(val)) + 1 and stopped.best_val_loss_ == min(val)
    # Training is deterministic, so a run that simply ends at the best epoch has the kept weights.
    at_best = TabularNetEstimator(**params, epochs=stopped.best_epoch_).fit(x, y)
    np.testing.assert_array_equal(stopped.predict_proba(x), at_best.predict_proba(x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_where_there_is_none_says_to_use_auto_or_cpu():
    x, y = toy_data(100)
    with pytest.raises(TrainingError, match=r"'cuda' was requested but CUDA is not available.*'auto'.*'cpu'"):
        TabularNetEstimator(device="cuda", epochs=1).fit(x, y)


def test_a_diverging_loss_stops_training_naming_the_epoch():
    x, y = toy_data(500)
    with pytest.raises(TrainingError, match=r"training loss is (nan|inf) at epoch 1 of 5: the network diverged"):
        TabularNetEstimator(learning_rate=1e30, optimizer="sgd", epochs=5).fit(x, y)


# -- checkpoints ------------------------------------------------------------------------------------------

KILLED_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from prefect_mlops.tasks import torch_trainer

    save = torch_trainer._save_checkpoint

    def slow_save(path, payload):  # each epoch takes a while, so the parent can kill it mid-training
        save(path, payload)
        time.sleep(0.3)

    torch_trainer._save_checkpoint = slow_save
    data = np.load(sys.argv[1])
    torch_trainer.TabularNetEstimator(**json.loads(sys.argv[3]), checkpoint_dir=sys.argv[2]).fit(data["x"], data["y"])
""")


def _saved_epoch(folder) -> int:
    found = sorted(folder.glob("tabularnet-*.pt"))
    return torch.load(found[0], weights_only=True)["epoch"] if found else 0


def test_a_killed_fit_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, caplog):
    x, y = toy_data()
    params = {**SMALL, "epochs": 12, "patience": 12, "dropout": 0.2, "seed": 11}
    np.savez(tmp_path / "data.npz", x=x, y=y)
    folder = tmp_path / "checkpoints"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(tmp_path / "data.npz"), str(folder),
                              json.dumps(params)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    try:
        deadline = time.monotonic() + 90
        while _saved_epoch(folder) < 2:
            assert child.poll() is None, f"training process ended early: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint for epoch 2 after 90 s"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -9  # SIGKILL: no clean-up ran
    saved = torch.load(next(folder.glob("tabularnet-*.pt")), weights_only=True)
    assert {"model", "optimizer", "scaler", "rng", "epoch", "best"} <= set(saved) and not saved["finished"]
    killed_at = saved["epoch"]
    assert 2 <= killed_at < 12

    caplog.set_level(logging.INFO, logger="prefect_mlops")
    resumed = TabularNetEstimator(**params, checkpoint_dir=str(folder)).fit(x, y)
    uninterrupted = TabularNetEstimator(**params).fit(x, y)

    assert resumed.resumed_from_epoch_ == killed_at and uninterrupted.resumed_from_epoch_ is None
    assert f"resuming from checkpoint {resumed.checkpoint_path_} at epoch {killed_at} of 12" in caplog.text
    assert [h["epoch"] for h in resumed.history_] == list(range(1, 13))
    assert [h["val_loss"] for h in resumed.history_] == [h["val_loss"] for h in uninterrupted.history_]
    np.testing.assert_allclose(resumed.predict_proba(x), uninterrupted.predict_proba(x), rtol=0, atol=1e-6)
    assert resumed.best_epoch_ == uninterrupted.best_epoch_


def test_a_finished_checkpoint_is_reused_only_for_the_same_data_and_params(tmp_path):
    x, y = toy_data(800)
    params = {**SMALL, "epochs": 4, "checkpoint_dir": str(tmp_path)}
    first = TabularNetEstimator(**params).fit(x, y)
    again = TabularNetEstimator(**params).fit(x, y)
    assert (first.resumed_from_epoch_, again.resumed_from_epoch_) == (None, first.n_epochs_)
    np.testing.assert_array_equal(first.predict_proba(x), again.predict_proba(x))
    assert TabularNetEstimator(**{**params, "seed": 1}).fit(x, y).resumed_from_epoch_ is None
    assert TabularNetEstimator(**params).fit(x, y[::-1]).resumed_from_epoch_ is None
    assert len(list(tmp_path.glob("tabularnet-*.pt"))) == 3 and not list(tmp_path.glob("*.tmp"))


# -- MLflow -----------------------------------------------------------------------------------------------


def test_torch_model_is_logged_as_one_pyfunc_that_scores_raw_rows(churn_source, churn_features, mlflow_server,
                                                                   workspace, window0):
    features = churn_features_set(churn_source, churn_features, workspace, window0)
    trainer = TrainerSpec(kind="torch", params=SMALL, seed=5)
    lineage = Lineage(model_name="churn", dataset=features.dataset, features=churn_features, trainer=trainer,
                      params_digest=recipe_digest(churn_features, trainer))
    _, holdout = load_split(features)
    raw = holdout[churn_features.feature_columns]
    assert raw["plan"].map(type).eq(str).all()  # raw rows: categories are strings

    # train_model: per-epoch curves and the device in MLflow, checkpoints in the workspace.
    trained = train_model(features, trainer, lineage=lineage, mlflow_server=mlflow_server, workspace=workspace)
    client = mlflow_server.client(workspace)
    params = client.get_run(trained.run_id).data.params
    assert (params["trainer.kind"], params["torch.device"], params["torch.resumed_from_epoch"]) == ("torch", "cpu",
                                                                                                    "None")
    epochs = int(params["torch.epochs_run"])
    for name in ("train_loss", "val_loss"):
        assert [m.step for m in client.get_metric_history(trained.run_id, name)] == list(range(1, epochs + 1))
    # Named by the data, the recipe and the planned rows (all of them here).
    folder = workspace.root / "checkpoints" / checkpoint_key(features, lineage, trained.lineage.training)
    assert folder.name.endswith(f"-all-{features.train_rows}")
    assert len(list(folder.glob("tabularnet-*.pt"))) == 1

    # The in-memory pipeline (transform + network) and what MLflow gives back predict the same.
    pipeline, example = fit_pipeline(features, trainer)
    logged = log_model(pipeline, example, lineage=lineage, mlflow_server=mlflow_server, workspace=workspace,
                       fit_seconds=0.0)
    pyfunc = mlflow_server.load_model(logged.model_source, workspace, flavor="pyfunc")
    inputs = {c.name: str(c.type) for c in pyfunc.metadata.get_input_schema().inputs}
    assert set(inputs) == set(churn_features.feature_columns) and "string" in inputs["plan"].lower()
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(raw)), pipeline.predict(raw))
    sklearn_flavor = mlflow_server.load_model(logged.model_source, workspace)
    np.testing.assert_array_equal(sklearn_flavor.predict_proba(raw), pipeline.predict_proba(raw))
    # ... and the model train_model logged (with checkpoints) is the same network.
    from_train = mlflow_server.load_model(trained.model_source, workspace)
    np.testing.assert_array_equal(from_train.predict_proba(raw), pipeline.predict_proba(raw))
    requirements = open(f"{logged.model_source.removeprefix('file://')}/requirements.txt").read()
    assert f"torch=={torch.__version__.split('+')[0]}\n" in requirements


# -- through the flow -------------------------------------------------------------------------------------


def test_torch_challenger_competes_with_a_sklearn_champion(churn_source, churn_features, fast_trainer, policy,
                                                           mlflow_server, workspace, champion_version, caplog):
    caplog.set_level(logging.INFO)
    common = {"policy": policy, "window": period_window(0), "mlflow_server": mlflow_server,
              "workspace": str(workspace.root)}
    first = continuous_training("churn", churn_source, churn_features, fast_trainer, **common)
    assert first.outcome == "promoted" and first.champion_version == "1"

    report = continuous_training("churn", churn_source, churn_features,
                                 TrainerSpec(kind="torch", params=SMALL, seed=7), **common)
    assert report.outcome in ("promoted", "rejected") and report.gate_reason
    # Training progress is in the train task's Prefect log, one line per epoch.
    assert any(r.name == "prefect.task_runs" and r.getMessage().startswith("torch trainer: epoch 1/15 train_loss=")
               for r in caplog.records)
    # Judged against the sklearn champion (refit on the whole window, so not its hold-out figure).
    assert report.champion_metric is not None and "champion v1" in report.gate_reason
    if report.outcome == "promoted":
        assert report.challenger_version == "2" and champion_version(mlflow_server, workspace) == "2"
    else:
        assert report.message.startswith("gate rejected the challenger") and "roc_auc" in report.gate_reason
        assert champion_version(mlflow_server, workspace) == "1"
    client = mlflow_server.client(workspace)
    [torch_run] = client.search_runs([mlflow_server.experiment_id(workspace)],
                                     filter_string="params.`trainer.kind` = 'torch'")
    assert torch_run.data.params["torch.device"] == "cpu" and "holdout_roc_auc" in torch_run.data.metrics


def test_diverging_torch_run_fails_and_leaves_the_torch_champion_serving(churn_source, churn_features, policy,
                                                                         mlflow_server, workspace, champion_version,
                                                                         monkeypatch):
    import mlflow.pyfunc

    common = {"policy": policy, "window": period_window(0), "mlflow_server": mlflow_server,
              "workspace": str(workspace.root)}
    good = continuous_training("churn", churn_source, churn_features, TrainerSpec(kind="torch", params=SMALL),
                               **common)
    assert good.outcome == "promoted" and good.champion_version == "1"
    # models:/churn@champion is one pyfunc: it scores raw rows, categories as strings.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri(workspace))
    rows = pd.read_parquet(churn_source.uri).head(40)[churn_features.feature_columns]
    scored = np.asarray(mlflow.pyfunc.load_model("models:/churn@champion").predict(rows))
    assert scored.shape == (40,) and set(scored) <= {0, 1}

    blown = TrainerSpec(kind="torch", params={**SMALL, "learning_rate": 1e30, "optimizer": "sgd"})
    state = continuous_training("churn", churn_source, churn_features, blown, **common, return_state=True)
    assert state.is_failed()
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 1 of 15"):
        state.result()
    assert champion_version(mlflow_server, workspace) == "1"
    client = mlflow_server.client(workspace)
    assert [str(v.version) for v in client.search_model_versions("name='churn'")] == ["1"]
    runs = client.search_runs([mlflow_server.experiment_id(workspace)])
    assert len(runs) == 1  # the diverged fit logged no run at all
