"""Train: fit the feature transform and an estimator as one pipeline, log it to MLflow with its lineage.

Trainers are chosen by `TrainerSpec.kind`: `sklearn` builds any scikit-learn estimator from
its import path; `torch` (the `torch` extra) builds a tabular network that behaves like a
scikit-learn estimator. Either way the logged model is one pipeline that scores raw rows.

How many rows a fit takes is the retrain policy's `TrainingBudget`: all training rows when
their estimated memory fits, otherwise a time-stratified sample, or every row streamed
through `partial_fit`. `Lineage.training` records which and why.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops import model_io
from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.retrain_policy import TrainingBudget
from prefect_mlops.errors import ConfigError, TrainingError, disk_full_error, shorten
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef
from prefect_mlops.tasks.features import FeatureSet, _holdout, load_split, make_transform, plain_dtypes
from prefect_mlops.tasks.lineage import TAG, Lineage, TrainerSpec, TrainingRecord, recipe_digest
from prefect_mlops.workspace import Workspace, iter_batches, read_frame, write_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

__all__ = ["TrainedModel", "TrainerSpec", "TrainingBudget", "budget_change", "build_estimator", "checkpoint_key",
           "fit_within_budget", "plan_training", "sample_positions", "train", "train_model"]

EXPANSION = 18.0
"""Peak memory of a fit per byte of its rows' Arrow data (feature and target columns), when the budget sets no
`expansion`: the largest ratio `make bench-scale` measured (bench/results/2026-11-30-scale.md, the train step's
peak less its start RSS over the Arrow bytes fit: 17.2x at 100,000 rows, 8.1x at 1M, 8.5x at 5M and 20M), with
HistGradientBoostingClassifier on 11 numeric and 7 categorical columns (the pandas frame, its train copy, the
one-hot matrix, the binned copy, and the model's logging). The ratio falls as rows grow (about 210 MiB of it is
fixed), so on millions of rows it overstates about 2x and samples fewer rows than would fit: rounded up, not
down, because too small a sample costs some accuracy and too large a fit ends the pod. Another estimator's
ratio goes in `TrainingBudget.expansion`."""
MIN_SAMPLE_ROWS = 100
"""A budget too small for even this many rows still fits on this many: a model from fewer says nothing."""
TRANSFORM_ROWS = 100_000
"""Rows (a time-stratified sample) the feature transform learns its medians, scales and categories from
before partial_fit streams every row through it."""


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


def fit_pipeline(features: FeatureSet, trainer: TrainerSpec, *, rows: Literal["train", "all"] = "train",
                 budget: TrainingBudget | None = None) -> tuple[Pipeline, Any]:
    """Fit transform + estimator on the training rows (or all rows); returns the pipeline and a sample of X.

    Within `budget` (default: half the available memory), as `fit_within_budget` plans it.
    """
    pipeline, example, _ = fit_within_budget(features, trainer, rows=rows, budget=budget)
    return pipeline, example


def plan_training(features: FeatureSet, trainer: TrainerSpec, budget: TrainingBudget | None = None, *,
                  rows: Literal["train", "all"] = "train", available: int | None = None) -> TrainingRecord:
    """Decide how a fit takes its rows: all, a time-stratified sample, or incremental; reads one batch.

    The estimate is the Arrow size of the feature and target columns (measured on the first
    batch) times `EXPANSION`, against `budget.memory_limit(available)` and `budget.max_rows`.
    For method 'incremental' the record's `rows` is filled in after the pass.

    Example:
        ```python
        import tempfile, pandas as pd
        from prefect_mlops.blocks.retrain_policy import TrainingBudget
        from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
        from prefect_mlops.tasks.train import TrainerSpec, plan_training
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        ref = ws.write_snapshot(pd.DataFrame({"x": range(1000), "y": [0, 1] * 500}), name="toy")
        fs = build_feature_set(ref, FeatureSpec(target="y", numeric=["x"]), workspace=ws)
        assert plan_training(fs, TrainerSpec(), TrainingBudget(max_memory=2**30)).method == "all"
        small = plan_training(fs, TrainerSpec(), TrainingBudget(max_rows=200))
        assert (small.method, small.rows, small.available_rows) == ("sample", 200, 800)
        ```
    """
    spec = features.spec
    available_rows = features.train_rows + (features.holdout_rows if rows == "all" else 0)
    per_row = _arrow_bytes_per_row(features.dataset, [*spec.feature_columns, spec.target])
    return _plan(spec, trainer, budget or TrainingBudget(), available_rows, per_row, available)


def _plan(spec: Any, trainer: TrainerSpec, budget: TrainingBudget, available_rows: int, per_row: float,
          available: int | None) -> TrainingRecord:
    expansion = budget.expansion or EXPANSION
    estimate = int(per_row * available_rows * expansion)
    limit = budget.memory_limit(available)
    in_memory = int(limit / (per_row * expansion)) if per_row else available_rows
    fitting = min(in_memory, budget.max_rows or in_memory)
    common = {"available_rows": available_rows, "estimated_bytes": estimate, "budget_bytes": limit, "budget": budget,
              "expansion": expansion}
    need = f"{available_rows:,} rows need about {_mb(estimate)} to fit"
    if fitting >= available_rows:
        return TrainingRecord(method="all", rows=available_rows, reason=f"{need}; the budget is {_mb(limit)}",
                              **common)
    over = (f"{need}, over the budget of {_mb(limit)}" if in_memory <= fitting else
            f"{available_rows:,} rows are over the budget's max_rows={budget.max_rows}")
    if budget.when_over == "incremental":
        # The torch trainer always has partial_fit: not built here, where PyTorch may not be installed (a routed run).
        if trainer.kind == "torch" or callable(getattr(build_estimator(trainer), "partial_fit", None)):
            return TrainingRecord(method="incremental", rows=0,
                                  reason=f"{over}: every row streamed through partial_fit", **common)
        over += (f"; {trainer.estimator if trainer.kind == 'sklearn' else 'the torch trainer'} has no "
                 "partial_fit, so a sample instead of the policy's incremental fit")
    fitting = min(available_rows, max(fitting, MIN_SAMPLE_ROWS))
    return TrainingRecord(method="sample", rows=fitting, sample=_sample_text(spec, budget),
                          reason=f"{over}: a sample of the {fitting:,} rows that fit", **common)


def fit_within_budget(features: FeatureSet, trainer: TrainerSpec, *, rows: Literal["train", "all"] = "train",
                      budget: TrainingBudget | None = None,
                      plan: TrainingRecord | None = None) -> tuple[Pipeline, Any, TrainingRecord]:
    """Fit the pipeline as `plan_training` decides (or as `plan` says); returns it, a sample of X and the record."""
    from sklearn.pipeline import Pipeline

    spec = features.spec
    record = plan or plan_training(features, trainer, budget, rows=rows)
    estimator = build_estimator(trainer)  # a bad parameter is a ConfigError, raised as such
    try:
        if record.method == "incremental":
            return _fit_incremental(features, estimator, record, rows=rows, seed=trainer.seed)
        if record.method == "all":
            # All rows: the snapshot as it is (time order kept), not the split put back together.
            train = plain_dtypes(read_frame(features.dataset)) if rows == "all" else load_split(features)[0]
        else:
            positions = sample_positions(features, record.rows, rows=rows, periods=record.budget.periods,
                                         seed=trainer.seed)
            train = take_rows(features, positions, [*spec.feature_columns, spec.target])
        x, y = train[spec.feature_columns], train[spec.target]
        pipeline = Pipeline([("features", make_transform(spec)), ("model", estimator)])
        pipeline.fit(x, y)
        record = record.model_copy(update={"transform_rows": len(train)})
    except (ValueError, TypeError) as exc:
        raise TrainingError(
            f"training {trainer.estimator if trainer.kind == 'sklearn' else 'torch'} on "
            f"{features.dataset.short()} ({record.summary()}) failed: {exc}. Check trainer.params and the "
            "feature spec"
        ) from exc
    # The signature keeps integer columns as integers: MLflow refuses int64 input for a double column.
    return pipeline, x.head(5), record


def sample_positions(features: FeatureSet, size: int, *, rows: Literal["train", "all"] = "train",
                     periods: int = 50, seed: int = 0) -> np.ndarray:
    """Sorted row positions of a sample of `size` rows (hold-out excluded unless `rows='all'`).

    With the spec's time column: stratified over `periods` equal spans of time, each span's share
    of the sample its share of the rows (largest remainders; rows without a time are a span of
    their own), drawn at random inside a span. Without one: a uniform random sample. Reads the
    time column alone, batch by batch.

    Example:
        ```python
        import tempfile, numpy as np, pandas as pd
        from prefect_mlops.tasks.features import FeatureSpec, build_feature_set
        from prefect_mlops.tasks.train import sample_positions
        from prefect_mlops.workspace import Workspace
        ws = Workspace(tempfile.mkdtemp())
        frame = pd.DataFrame({"t": np.arange(1000), "x": 1.0, "y": [0, 1] * 500})
        fs = build_feature_set(ws.write_snapshot(frame, name="toy"), FeatureSpec(target="y", numeric=["x"],
                               time_column="t"), workspace=ws)
        picked = sample_positions(fs, 80, periods=4)
        assert len(picked) == 80 and picked.max() < 800  # the hold-out (latest 200) is never sampled
        assert np.bincount(picked // 200).tolist() == [20, 20, 20, 20]
        ```
    """
    import numpy as np

    total = features.dataset.rows
    keep = np.ones(total, dtype=bool)
    if rows == "train":
        keep[_holdout(features, lambda: read_frame(features.dataset))] = False
    candidates = np.flatnonzero(keep)
    del keep
    rng = np.random.default_rng(seed)
    size = min(size, len(candidates))
    time_column = features.spec.time_column
    if not time_column:
        return np.sort(rng.choice(candidates, size, replace=False))
    times = _numeric_column(features, time_column)[candidates]
    known = ~np.isnan(times)
    low, high = (times[known].min(), times[known].max()) if known.any() else (0.0, 0.0)
    span = (high - low) or 1.0
    # int16 (periods <= 10,000): the stable argsort below is then a radix sort, linear in the rows.
    strata = np.full(len(times), periods, dtype=np.int16)  # no time: a stratum of their own
    strata[known] = np.minimum(((times[known] - low) / span * periods).astype(np.int64), periods - 1)
    del times, known
    counts = np.bincount(strata, minlength=periods + 1)
    exact = counts * (size / len(candidates))
    quota = np.floor(exact).astype(np.int64)
    short = size - int(quota.sum())
    if short:  # largest remainders first; ties to the later span
        order = np.lexsort((-np.arange(len(exact)), -(exact - quota)))
        quota[order[:short]] += 1
    order = np.argsort(strata, kind="stable")
    del strata
    starts = np.concatenate([[0], np.cumsum(counts)])
    picked = [order[starts[s]:starts[s + 1]][rng.choice(counts[s], quota[s], replace=False)]
              for s in range(len(counts)) if quota[s]]
    return np.sort(candidates[np.concatenate(picked)]) if picked else np.empty(0, dtype=np.int64)


def take_rows(features: FeatureSet, positions: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The rows at sorted `positions` as a frame (plain dtypes), streamed: memory holds the picked rows only."""
    import numpy as np
    import pyarrow as pa

    columns = list(dict.fromkeys(columns))
    parts, offset, schema = [], 0, None
    for batch in iter_batches(features.dataset, columns=columns):
        schema = schema or batch.schema
        end = offset + batch.num_rows
        low, high = np.searchsorted(positions, [offset, end])
        if high > low:
            parts.append(batch.take(pa.array(positions[low:high] - offset)))
        offset = end
    table = pa.Table.from_batches(parts, schema=schema) if schema is not None else pa.table({})
    return plain_dtypes(table.to_pandas())


def _fit_incremental(features: FeatureSet, estimator: Any, record: TrainingRecord, *,
                     rows: Literal["train", "all"], seed: int) -> tuple[Pipeline, Any, TrainingRecord]:
    """Fit the transform on a time-stratified sample, then stream every row through the estimator's partial_fit."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from sklearn.pipeline import Pipeline

    spec, budget = features.spec, record.budget
    columns = list(dict.fromkeys([*spec.feature_columns, spec.target]))
    sample = take_rows(features, sample_positions(features, min(TRANSFORM_ROWS, record.available_rows), rows=rows,
                                                  periods=budget.periods, seed=seed), columns)
    transform = make_transform(spec).fit(sample[spec.feature_columns], sample[spec.target])
    options: dict[str, Any] = {}
    if spec.task == "classification":  # partial_fit needs every class on its first call: one pass over the target
        seen = [pc.unique(b.column(0)) for b in iter_batches(features.dataset, columns=[spec.target])]
        options["classes"] = np.unique(pa.concat_arrays(seen).drop_null().to_numpy(zero_copy_only=False))
    holdout = None
    if rows == "train":
        holdout = np.zeros(features.dataset.rows, dtype=bool)
        holdout[_holdout(features, lambda: read_frame(features.dataset))] = True
    seen_rows, batches, offset = 0, 0, 0
    for batch in iter_batches(features.dataset, columns=columns, batch_rows=budget.batch_rows):
        end = offset + batch.num_rows
        if holdout is not None:
            batch = batch.filter(pa.array(~holdout[offset:end]))
        offset = end
        if not batch.num_rows:
            continue
        frame = plain_dtypes(batch.to_pandas())
        estimator.partial_fit(transform.transform(frame[spec.feature_columns]), frame[spec.target].to_numpy(),
                              **options)
        seen_rows, batches = seen_rows + batch.num_rows, batches + 1
    pipeline = Pipeline([("features", transform), ("model", estimator)])
    record = record.model_copy(update={"rows": seen_rows, "batches": batches, "transform_rows": len(sample)})
    return pipeline, sample[spec.feature_columns].head(5), record


def _arrow_bytes_per_row(dataset: DatasetRef, columns: list[str]) -> float:
    """Arrow bytes per row of `columns`, measured on the snapshot's first batch."""
    for batch in iter_batches(dataset, columns=list(dict.fromkeys(columns)), batch_rows=16_384):
        if batch.num_rows:
            return batch.nbytes / batch.num_rows
    return 0.0


def _numeric_column(features: FeatureSet, column: str) -> np.ndarray:
    """One column as float64 (timestamps as their integer ticks), NaN where empty; read batch by batch."""
    import numpy as np
    import pyarrow as pa

    parts = []
    for batch in iter_batches(features.dataset, columns=[column]):
        values = batch.column(0)
        if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
            values = values.cast(pa.int64()) if pa.types.is_timestamp(values.type) else values.cast(pa.int32())
        # Nanosecond ticks lose a few hundred nanoseconds as float64: nothing to a span of time.
        parts.append(values.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.empty(0)


def _sample_text(spec: Any, budget: TrainingBudget) -> str:
    if spec.time_column:
        return f"stratified over {budget.periods} equal spans of {spec.time_column!r}, each its share of rows"
    return "uniform random (the feature spec has no time column)"


def _mb(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


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
        if lineage.training is not None:
            params.update({"training.method": lineage.training.method, "training.rows": lineage.training.rows})
            if lineage.training.transform_rows is not None:
                params["training.transform_rows"] = lineage.training.transform_rows
        estimator = pipeline.steps[-1][1]
        if trainer.kind == "torch":  # where the network trained and how training ended
            params.update({"torch.device": estimator.device_, "torch.amp": estimator.amp_,
                           "torch.best_epoch": estimator.best_epoch_, "torch.epochs_run": estimator.n_epochs_,
                           "torch.resumed_from_epoch": estimator.resumed_from_epoch_})
        from mlflow.entities import Metric, Param

        stamp = int(time.time() * 1000)
        # A write per 100 params (MLflow's batch limit), not one per param: each is a store round trip.
        logged = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(logged), 100):
            client.log_batch(run_id, params=logged[start:start + 100])
        client.log_metric(run_id, "fit_seconds", fit_seconds)
        history = getattr(estimator, "history_", None) or []
        if history:  # per-epoch curves: one metric per loss, step = epoch
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
    the checksums checked before every load are what protect it. The files are written by the
    run's model-files process when it has one (`prefect_mlops.model_io`), where skops is imported.
    """
    # A torch network stays here: its tensors would cross by shared memory, and it is not saved with skops.
    write = _write_model if trainer.kind == "torch" else functools.partial(model_io.run, _write_model)
    fmt, refused = write(pipeline, local, trainer, **options)
    if refused:
        run_logger().warning("run %s: skops cannot save %s with only %s trusted (%s); saved with cloudpickle",
                             run_id, trainer.estimator, ", ".join(SKOPS_TRUSTED), shorten(refused, 500))
    return fmt


def _write_model(pipeline: Pipeline, local: str, trainer: TrainerSpec, **options: Any) -> tuple[str, str | None]:
    """Write the model's files into `local`: (the format, why skops refused it or None)."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    shutil.rmtree(local, ignore_errors=True)  # what an attempt cut short wrote (this folder is the caller's own)
    refused = None
    if trainer.kind != "torch":
        try:
            mlflow.sklearn.save_model(pipeline, local, serialization_format="skops",
                                      skops_trusted_types=list(SKOPS_TRUSTED),
                                      pip_requirements=_requirements(trainer, skops=True), **options)
            return "skops", None
        except MlflowException as exc:
            if "untrusted types" not in str(exc) and "skops serialization format" not in str(exc):
                raise
            shutil.rmtree(local, ignore_errors=True)
            refused = str(exc)
    mlflow.sklearn.save_model(pipeline, local, serialization_format="cloudpickle",
                              pip_requirements=_requirements(trainer), **options)
    return "cloudpickle", refused


def start_model_files(trainer: TrainerSpec) -> bool:
    """Fork the process that writes and reads this run's model files, as the run starts (`prefect_mlops.model_io`).

    skops' import (seconds) then runs on another core while the data is read, checked and fitted. None is
    started for a torch network (saved with cloudpickle), nor where skops is imported already (a process
    that loaded a model before saves and loads as fast itself); True when a process serves the run.

    Example:
        ```python
        from prefect_mlops.tasks.lineage import TrainerSpec
        from prefect_mlops import model_io
        from prefect_mlops.tasks.train import start_model_files
        start_model_files(TrainerSpec())
        model_io.stop()
        ```
    """
    return trainer.kind != "torch" and "skops.io" not in sys.modules and model_io.start()


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
    # The same budget as the first fit; the record then says what the refit model learned from.
    pipeline, example, record = fit_within_budget(features, lineage.trainer, rows="all",
                                                  budget=lineage.training.budget if lineage.training else None)
    client = server.client(workspace)
    lineage = lineage.model_copy(update={"refit": True, "training": record})
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
    budget: TrainingBudget | None = None,
) -> TrainedModel:
    """Fit the pipeline within `budget` and log it to MLflow; the plain function behind the `train` task."""
    workspace = workspace or Workspace()
    started = time.perf_counter()
    plan = plan_training(features, trainer, budget)
    if trainer.kind == "torch":
        # The network learns the spec's task; its checkpoints live in a folder named by the data, the
        # recipe and the planned rows, so a retried task (or a re-run on the same data) resumes instead of
        # starting over, and a fit with a larger budget does not resume one that learned from fewer rows.
        extra: dict[str, Any] = {"task": features.spec.task}
        if "checkpoint_dir" in build_estimator(trainer).get_params():
            extra["checkpoint_dir"] = str(workspace.folder("checkpoints", checkpoint_key(features, lineage, plan)))
        trainer = trainer.model_copy(update={"params": {**extra, **trainer.params}})
    pipeline, example, record = fit_within_budget(features, trainer, budget=budget, plan=plan)
    if record.method != "all":
        run_logger().warning("%s: %s; %s", features.dataset.short(), record.summary(), record.reason)
    lineage = lineage.model_copy(update={"training": record})
    return log_model(pipeline, example, lineage=lineage, mlflow_server=mlflow_server or MlflowServer(),
                     workspace=workspace, fit_seconds=time.perf_counter() - started)


def checkpoint_key(features: FeatureSet, lineage: Lineage, plan: TrainingRecord) -> str:
    """The checkpoint folder's name: data, recipe, and the planned method and rows.

    Example:
        ```python
        from prefect_mlops.tasks.lineage import TrainingRecord
        from prefect_mlops.tasks.train import checkpoint_key
        class Data: fingerprint = "f" * 64
        class Features: dataset = Data()
        class Recipe: params_digest = "abc"
        plan = TrainingRecord(method="sample", rows=500, available_rows=3200, reason="")
        assert checkpoint_key(Features(), Recipe(), plan) == "ffffffffffffffff-abc-sample-500"
        ```
    """
    rows = plan.rows if plan.method != "incremental" else f"{plan.available_rows}b{plan.budget.batch_rows}"
    return f"{features.dataset.fingerprint[:16]}-{lineage.params_digest}-{plan.method}-{rows}"


def budget_change(record: TrainingRecord | None, budget: TrainingBudget, trainer: TrainerSpec, dataset: DatasetRef,
                  spec: Any, *, available: int | None = None) -> str | None:
    """Why a champion fit on the same data with the same recipe should be fit again under `budget`, or None.

    Only a change of the budget's settings counts: with the settings the champion was fit under, the
    answer is None whatever the machine's free memory does today, so the same data never retrains
    because memory moved. With other settings the champion's record is planned again: a champion that
    learned from every row in one fit stays; one fit on a sample is fit again when the budget now plans
    another method, at least 10% more rows, or other time spans; an incremental one when the batch size
    changed. A champion without a record learned from all rows. A budget without `max_memory` is a share
    of this process's memory (a routed fit's worker may differ).

    Example:
        ```python
        from prefect_mlops.blocks.retrain_policy import TrainingBudget
        from prefect_mlops.tasks.lineage import TrainingRecord
        from prefect_mlops.tasks.train import budget_change
        old = TrainingRecord(method="all", rows=800, available_rows=800, reason="fits")
        assert budget_change(old, TrainingBudget(max_rows=100), None, None, None) is None
        ```
    """
    if record is None or record.method == "all" or record.budget == budget:
        return None
    per_row = _arrow_bytes_per_row(dataset, [*spec.feature_columns, spec.target])
    now = _plan(spec, trainer, budget, record.available_rows, per_row, available)
    was = f"the champion learned from {record.summary()}"
    if now.method != record.method:
        rows = f"{now.rows:,} rows" if now.method == "sample" else f"all {now.available_rows:,} rows"
        return f"{was}; the training budget now plans {now.method} ({rows})"
    if now.method == "sample" and now.rows >= record.rows * 1.1:
        return f"{was}; the training budget now fits {now.rows:,} rows"
    if now.method == "sample" and budget.periods != record.budget.periods:
        return f"{was} over {record.budget.periods} time spans; the training budget now asks for {budget.periods}"
    if now.method == "incremental" and budget.batch_rows != record.budget.batch_rows:
        return f"{was} in batches of {record.budget.batch_rows:,}; the training budget now says {budget.batch_rows:,}"
    return None


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
    budget: TrainingBudget | None = None,
) -> TrainedModel:
    """Fit and log a challenger within the retrain policy's training budget (see `train_model`)."""
    lineage = lineage.model_copy(update={"flow_run_id": lineage.flow_run_id or flow_run.get_id()})
    if lineage.params_digest != recipe_digest(features.spec, trainer):
        raise ConfigError("lineage.params_digest does not match the feature spec and trainer being trained")
    trained = train_model(features, trainer, lineage=lineage, mlflow_server=mlflow_server,
                          workspace=Workspace(workspace), budget=budget)
    run_logger().info("trained %s on %s (%s) -> MLflow run %s", trainer.estimator if trainer.kind == "sklearn"
                      else "torch network", features.dataset.short(), trained.lineage.training.summary()
                      if trained.lineage.training else "all rows", trained.run_id)
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
