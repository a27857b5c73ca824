"""Train: fit the feature transform and an estimator as one pipeline, log it to MLflow with its lineage.

Trainers are chosen by `TrainerSpec.kind`: `sklearn` builds any scikit-learn estimator from
its import path; `torch` (the `torch` extra) builds a tabular network that behaves like a
scikit-learn estimator. Either way the logged model is one pipeline that scores raw rows.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.errors import ConfigError, TrainingError, disk_full_error, shorten
from prefect_mlops.log import run_logger
from prefect_mlops.tasks.features import FeatureSet, load_split, make_transform, plain_dtypes
from prefect_mlops.tasks.lineage import TAG, Lineage, TrainerSpec, recipe_digest
from prefect_mlops.workspace import Workspace, read_frame, write_atomic

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["TrainedModel", "TrainerSpec", "build_estimator", "train", "train_model"]


class TrainedModel(BaseModel):
    """A fitted pipeline logged to MLflow, not yet registered."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    model_source: str = Field(description="Artifact location of the logged model.")
    lineage: Lineage
    sha256: str | None = Field(default=None, description="SHA-256 of the model's checksum manifest "
                               "(prefect_mlops.integrity): checked before every load.")


def build_estimator(trainer: TrainerSpec) -> Any:
    """Instantiate the estimator a `TrainerSpec` names, with its parameters and seed."""
    if trainer.kind == "torch":
        try:
            from prefect_mlops.tasks.torch_trainer import TabularNetEstimator, require_torch

            require_torch()  # the module itself never imports torch: check it is there before any work
        except ImportError as exc:
            raise TrainingError(
                f"trainer kind 'torch' needs PyTorch ({exc}); install it with "
                "`pip install 'prefect-mlops[torch]'` (CPU: `pip install torch==2.13.0` first)"
            ) from exc
        accepted = TabularNetEstimator().get_params()
        unknown = sorted(set(trainer.params) - set(accepted))
        if unknown:
            raise ConfigError(f"trainer.params {unknown} are not parameters of the torch trainer; it accepts "
                              f"{sorted(accepted)}")
        estimator = TabularNetEstimator(**{"seed": trainer.seed, **trainer.params})
        estimator.config()  # a bad value fails here, naming the parameter, before any data is read
        return estimator
    module_name, _, class_name = trainer.estimator.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"trainer.estimator {trainer.estimator!r} cannot be imported ({exc}); give a full import "
            "path such as 'sklearn.ensemble.RandomForestClassifier'"
        ) from exc
    if not inspect.isclass(cls) or not hasattr(cls, "fit"):
        raise ConfigError(f"trainer.estimator {trainer.estimator!r} is not an estimator class with fit()")
    params = dict(trainer.params)
    try:
        accepted = cls().get_params()
    except Exception:
        accepted = {}
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = trainer.seed
    unknown = sorted(set(params) - set(accepted)) if accepted else []
    if unknown:
        raise ConfigError(
            f"trainer.params {unknown} are not parameters of {trainer.estimator}; it accepts "
            f"{sorted(accepted)}"
        )
    try:
        estimator = cls(**params)
        # scikit-learn checks parameter values only in fit(); its own check needs no data, so a bad
        # value fails here, before ingest, naming the parameter.
        check = getattr(estimator, "_validate_params", None)
        if callable(check):
            check()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.params for {trainer.estimator}: {exc}") from exc
    return estimator


def fit_pipeline(features: FeatureSet, trainer: TrainerSpec, *,
                 rows: Literal["train", "all"] = "train") -> tuple[Pipeline, Any]:
    """Fit transform + estimator on the training rows (or all rows); returns the pipeline and a sample of X."""
    from sklearn.pipeline import Pipeline

    spec = features.spec
    # All rows: the snapshot as it is (time order kept), not the split put back together.
    train = plain_dtypes(read_frame(features.dataset)) if rows == "all" else load_split(features)[0]
    x, y = train[spec.feature_columns], train[spec.target]
    pipeline = Pipeline([("features", make_transform(spec)), ("model", build_estimator(trainer))])
    try:
        pipeline.fit(x, y)
    except (ValueError, TypeError) as exc:
        raise TrainingError(
            f"training {trainer.estimator if trainer.kind == 'sklearn' else 'torch'} on "
            f"{features.dataset.short()} failed: {exc}. Check trainer.params and the feature spec"
        ) from exc
    # The signature keeps integer columns as integers: MLflow refuses int64 input for a double column.
    return pipeline, x.head(5)


def log_model(
    pipeline: Pipeline,
    example: Any,
    *,
    lineage: Lineage,
    mlflow_server: MlflowServer,
    workspace: Workspace,
    fit_seconds: float,
) -> TrainedModel:
    """Log a fitted pipeline, its parameters and lineage to a new MLflow run (explicit run id)."""
    client = mlflow_server.client(workspace)
    experiment_id = mlflow_server.experiment_id(workspace)
    run = client.create_run(
        experiment_id,
        run_name=f"{lineage.model_name}-{lineage.dataset.fingerprint[:8]}",
        tags={k: v for k, v in lineage.run_tags().items() if v},
    )
    run_id = run.info.run_id
    try:
        trainer = lineage.trainer
        params = {"trainer.kind": trainer.kind, "trainer.estimator": trainer.estimator,
                  "trainer.seed": trainer.seed, **{f"model.{k}": v for k, v in trainer.params.items()},
                  "features.target": lineage.features.target, "features.task": lineage.features.task,
                  "data.rows": lineage.dataset.rows}
        estimator = pipeline.steps[-1][1]
        if trainer.kind == "torch":  # where the network trained and how training ended
            params.update({"torch.device": estimator.device_, "torch.amp": estimator.amp_,
                           "torch.best_epoch": estimator.best_epoch_, "torch.epochs_run": estimator.n_epochs_,
                           "torch.resumed_from_epoch": estimator.resumed_from_epoch_})
        for key, value in params.items():
            client.log_param(run_id, key, str(value)[:6000])
        client.log_metric(run_id, "fit_seconds", fit_seconds)
        history = getattr(estimator, "history_", None) or []
        if history:  # per-epoch curves: one metric per loss, step = epoch
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            curves = [Metric(name, float(row[name]), stamp, int(row["epoch"])) for row in history
                      for name in ("train_loss", "val_loss") if name in row]
            for start in range(0, len(curves), 1000):  # MLflow's batch limit
                client.log_batch(run_id, metrics=curves[start:start + 1000])
        digest, files = _log_pipeline(client, run_id, pipeline, example, trainer, artifact_path="model")
        # The lineage record lists what the model was made of and, here, the checksum of each of its files.
        client.log_dict(run_id, {**lineage.model_dump(mode="json"), "model_sha256": digest, "model_files": files},
                        "lineage.json")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrainedModel(run_id=run_id, model_source=f"{run.info.artifact_uri}/model", lineage=lineage,
                        sha256=digest)


SKOPS_TRUSTED = ("numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.tree._tree.Tree")
"""Types skops is told to trust, beyond its defaults, to load the project's scikit-learn pipelines:
NumPy dtypes and fitted trees (checked per estimator by tests/tasks/test_model_formats.py)."""


def _save_pipeline(pipeline: Pipeline, local: str, trainer: TrainerSpec, run_id: str, **options: Any) -> str:
    """Save with skops when it can rebuild the pipeline from `SKOPS_TRUSTED` types, else cloudpickle; the format.

    skops rebuilds a model from data without running code from the file. A torch network, or an
    estimator that needs a type outside the list, is saved with cloudpickle, whose load runs code:
    the checksums checked before every load are what protect it.
    """
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    if trainer.kind != "torch":
        try:
            mlflow.sklearn.save_model(pipeline, local, serialization_format="skops",
                                      skops_trusted_types=list(SKOPS_TRUSTED),
                                      pip_requirements=_requirements(trainer, skops=True), **options)
            return "skops"
        except MlflowException as exc:
            if "untrusted types" not in str(exc) and "skops serialization format" not in str(exc):
                raise
            shutil.rmtree(local, ignore_errors=True)
            run_logger().warning("run %s: skops cannot save %s with only %s trusted (%s); saved with cloudpickle",
                                 run_id, trainer.estimator, ", ".join(SKOPS_TRUSTED), shorten(str(exc), 500))
    mlflow.sklearn.save_model(pipeline, local, serialization_format="cloudpickle",
                              pip_requirements=_requirements(trainer), **options)
    return "cloudpickle"


def _log_pipeline(client: Any, run_id: str, pipeline: Pipeline, example: Any, trainer: TrainerSpec, *,
                  artifact_path: str) -> tuple[str, dict[str, str]]:
    """Save, checksum and upload the model; returns the manifest's digest and the per-file checksums."""
    from mlflow.models import infer_signature

    from prefect_mlops.integrity import DIGEST_TAG, read_manifest, write_manifest

    signature = infer_signature(example, pipeline.predict(example))
    with tempfile.TemporaryDirectory() as folder:
        local = f"{folder}/model"
        try:
            _save_pipeline(pipeline, local, trainer, run_id, signature=signature, input_example=example)
            digest = write_manifest(local)  # before the upload: what is recorded is what was saved
        except OSError as exc:
            error = disk_full_error(exc, local, stage=f"saving the model of run {run_id}",
                                    advice="free space there or set TMPDIR to a folder with room, then retry",
                                    left=f"no {artifact_path!r} artifact was logged")
            if error is None:
                raise
            raise error from exc
        dest = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        try:
            client.log_artifacts(run_id, local, artifact_path=artifact_path)
        except OSError as exc:
            error = disk_full_error(exc, dest, stage=f"logging the model of run {run_id}",
                                    left=f"the partial {artifact_path!r} artifact was removed")
            if error is None:
                raise
            if dest.startswith(("file:", "/")):  # a half-copied model must not look loadable
                shutil.rmtree(dest.removeprefix("file://"), ignore_errors=True)
            raise error from exc
        files = read_manifest(local)
    client.set_tag(run_id, DIGEST_TAG if artifact_path == "model" else f"{DIGEST_TAG}.{artifact_path}", digest)
    return digest, files


REFIT_PATH = "refit-model"


def refit_challenger(
    trained: TrainedModel,
    features: FeatureSet,
    smoke_sample_uri: str,
    *,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> tuple[TrainedModel, str]:
    """Fit the challenger's recipe again on every row of its window, hold-out included.

    The refit model goes into the same MLflow run (artifact `refit-model`), so the gate's verdict
    on that run still names it; lineage says `refit: true`. Returns the refit model and a new
    smoke sample: the same rows with the refit model's predictions, for deploy's smoke test.
    The hold-out metrics stay those of the model fitted without the hold-out: an honest estimate.
    """
    import pandas as pd

    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    lineage = trained.lineage
    pipeline, example = fit_pipeline(features, lineage.trainer, rows="all")
    client = server.client(workspace)
    lineage = lineage.model_copy(update={"refit": True})
    client.set_tag(trained.run_id, f"{TAG}.refit", "true")
    digest, files = _log_pipeline(client, trained.run_id, pipeline, example, lineage.trainer, artifact_path=REFIT_PATH)
    client.log_dict(trained.run_id, {**lineage.model_dump(mode="json"), "model_sha256": digest,
                                     "model_files": files}, "lineage.json")
    sample = pd.read_parquet(smoke_sample_uri)
    sample["__prediction__"] = pipeline.predict(sample.drop(columns="__prediction__"))
    path = write_atomic(workspace.folder("samples") / f"{trained.run_id}-refit.parquet",
                        lambda tmp: sample.to_parquet(tmp, index=False), stage="refit smoke sample")
    source = trained.model_source.rsplit("/", 1)[0] + f"/{REFIT_PATH}"
    return TrainedModel(run_id=trained.run_id, model_source=source, lineage=lineage, sha256=digest), str(path)


def train_model(
    features: FeatureSet,
    trainer: TrainerSpec,
    *,
    lineage: Lineage,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> TrainedModel:
    """Fit the pipeline and log it to MLflow; the plain function behind the `train` task."""
    workspace = workspace or Workspace()
    if trainer.kind == "torch":
        # The network learns the spec's task; its checkpoints live in a folder named by the data and
        # the recipe, so a retried task (or a re-run on the same data) resumes instead of starting over.
        extra: dict[str, Any] = {"task": features.spec.task}
        if "checkpoint_dir" in build_estimator(trainer).get_params():
            extra["checkpoint_dir"] = str(workspace.folder(
                "checkpoints", f"{features.dataset.fingerprint[:16]}-{lineage.params_digest}"))
        trainer = trainer.model_copy(update={"params": {**extra, **trainer.params}})
    started = time.perf_counter()
    pipeline, example = fit_pipeline(features, trainer)
    return log_model(pipeline, example, lineage=lineage, mlflow_server=mlflow_server or MlflowServer(),
                     workspace=workspace, fit_seconds=time.perf_counter() - started)


def git_commit() -> str | None:
    """The current git commit of the working directory, with `-dirty` when it has changes."""
    if shutil.which("git") is None:
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    return f"{commit}-dirty" if dirty else commit


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages that shape a model."""
    found = {}
    for name in names or ("prefect-mlops", "scikit-learn", "pandas", "numpy", "mlflow", "prefect"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _requirements(trainer: TrainerSpec, *, skops: bool = False) -> list[str]:
    # Given explicitly: MLflow's inference loads the model in a subprocess (~3 s a model).
    names = ["scikit-learn", "pandas", "numpy", "skops" if skops else "cloudpickle", "mlflow"]
    if trainer.kind == "torch":
        names += ["torch", "prefect-mlops"]
    # torch's local version label (`+cpu`, `+cu128`) is not on PyPI: pin the public release instead.
    return [f"{name}=={ver.split('+')[0] if name == 'torch' else ver}"
            for name, ver in package_versions(*names).items()]


@task(name="train", task_run_name="train-{lineage.model_name}")
def train(
    features: FeatureSet,
    trainer: TrainerSpec,
    lineage: Lineage,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> TrainedModel:
    """Fit and log a challenger (see `train_model`)."""
    lineage = lineage.model_copy(update={"flow_run_id": lineage.flow_run_id or flow_run.get_id()})
    if lineage.params_digest != recipe_digest(features.spec, trainer):
        raise ConfigError("lineage.params_digest does not match the feature spec and trainer being trained")
    trained = train_model(features, trainer, lineage=lineage, mlflow_server=mlflow_server,
                          workspace=Workspace(workspace))
    run_logger().info("trained %s on %s -> MLflow run %s", trainer.estimator if trainer.kind == "sklearn"
                          else "torch network", features.dataset.short(), trained.run_id)
    return trained


@task(name="refit", task_run_name="refit-{trained.run_id}")
def refit(
    trained: TrainedModel,
    features: FeatureSet,
    smoke_sample_uri: str,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> tuple[TrainedModel, str]:
    """Refit a gated challenger on its whole window (see `refit_challenger`)."""
    result = refit_challenger(trained, features, smoke_sample_uri, mlflow_server=mlflow_server,
                              workspace=Workspace(workspace))
    run_logger().info("refit %s on all %s rows of %s", trained.run_id, features.train_rows + features.holdout_rows,
                      features.dataset.short())
    return result
