"""One benchmark configuration, run in a fresh process by `bench/run.py`; prints one JSON line.

`python bench/child.py <mode> '<json options>'`. Every mode times only its own work (imports
and set-up are timed apart or not at all) and reports the process's peak RSS
(`ru_maxrss`), plus the peak RSS seen during each stage by a sampling thread.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402 - the benchmark's own data module, beside this file

MODEL = "bench"
TRAINER_PARAMS = {"max_iter": 30, "learning_rate": 0.1, "early_stopping": False}
RESULT_TAG = "BENCH-RESULT "
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Sampler:
    """Polls this process's RSS every few milliseconds; `peak()` is the largest since `reset()`."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self._peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def reset(self) -> None:
        self._peak = rss_bytes()

    def peak(self) -> int:
        return max(self._peak, rss_bytes())

    def stop(self) -> None:
        self._stop.set()


class Recorder:
    """Times named steps; each gets its wall time, RSS at the start and the peak RSS during it."""

    def __init__(self) -> None:
        self.sampler = Sampler()
        self.steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def step(self, name: str):
        start_rss = rss_bytes()
        self.sampler.reset()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.steps[name] = {"seconds": seconds, "rss_start": start_rss, "rss_peak": self.sampler.peak()}


# ---------------------------------------------------------------------------------------------- set-up
def environment() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "true")


def configs(rows: int, folder: Path) -> dict[str, Any]:
    """The data source, feature spec, trainer, policy and MLflow store one run uses."""
    from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
    from prefect_mlops.tasks.features import FeatureSpec
    from prefect_mlops.tasks.lineage import TrainerSpec

    return {
        "source": DataSource(uri=str(data.path_for(rows))),
        "current": DataSource(uri=str(data.path_for(rows, drifted=True))),
        "features": FeatureSpec(target=data.TARGET, numeric=data.NUMERIC, categorical=data.CATEGORICAL,
                                time_column=data.TIME, slice_column=data.SLICE),
        "trainer": TrainerSpec(estimator="sklearn.ensemble.HistGradientBoostingClassifier",
                               params=TRAINER_PARAMS),
        "policy": ModelPolicy(floors={"roc_auc": 0.6}, first_run="promote"),
        "server": MlflowServer(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
                               artifact_location=(folder / "mlartifacts").as_uri(), experiment="bench"),
        "suite": str(data.path_for(rows).with_name(f"suite-{rows}-{data.GENERATOR}-s{data.SEED}.json")),
        "workspace": str(folder / "workspace"),
    }


def init_mlflow(server: Any, workspace: Any) -> float:
    """Create the MLflow SQLite store and experiment (its schema migrations take seconds once)."""
    started = time.perf_counter()
    server.experiment_id(workspace)
    return time.perf_counter() - started


def preimport() -> float:
    """Import what every configuration uses, so stage times hold no first-import cost."""
    started = time.perf_counter()
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.metrics  # noqa: F401
    return time.perf_counter() - started


def requirements() -> list[str]:
    from prefect_mlops.tasks.lineage import TrainerSpec
    from prefect_mlops.tasks.train import _requirements

    return _requirements(TrainerSpec())


# ---------------------------------------------------------------------------------------------- modes
def mode_stages(opts: dict[str, Any]) -> dict[str, Any]:
    """The nine stages' plain functions in sequence, as the flow orders them; then the drift check."""
    from prefect_mlops.tasks.deploy import promote
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.tasks.evaluate import evaluate_models
    from prefect_mlops.tasks.features import build_feature_set
    from prefect_mlops.tasks.gate import judge
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import Lineage, recipe_digest
    from prefect_mlops.tasks.register import register_version
    from prefect_mlops.tasks.train import fit_pipeline, log_model
    from prefect_mlops.tasks.validate import validate_dataset
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    started = time.perf_counter()
    import evidently.presets  # noqa: F401 - stage times hold no first-import cost; timed here instead
    import great_expectations  # noqa: F401
    imports_gx_evidently = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    cfg = configs(opts["rows"], folder)
    ws = Workspace(cfg["workspace"])
    server = cfg["server"]
    mlflow_init = init_mlflow(server, ws)
    rec = Recorder()
    with rec.step("ingest"):
        ref = ingest_dataset(cfg["source"], name=MODEL, workspace=ws)
    with rec.step("validate"):
        report = validate_dataset(ref, suite_path=cfg["suite"], workspace=ws)
    assert report.passed, report.failures
    with rec.step("feature-build"):
        features = build_feature_set(ref, cfg["features"], workspace=ws)
    lineage = Lineage(model_name=MODEL, dataset=ref, features=cfg["features"], trainer=cfg["trainer"],
                      params_digest=recipe_digest(cfg["features"], cfg["trainer"]))
    with rec.step("train"):
        started = time.perf_counter()
        pipeline, example = fit_pipeline(features, cfg["trainer"])
        fitted = time.perf_counter()
        trained = log_model(pipeline, example, lineage=lineage, mlflow_server=server, workspace=ws,
                            fit_seconds=fitted - started)
        logged = time.perf_counter()
    del pipeline
    with rec.step("evaluate"):
        evaluation = evaluate_models(trained, features, policy=cfg["policy"], mlflow_server=server, workspace=ws)
    with rec.step("gate"):
        verdict = judge(evaluation, cfg["policy"])
    assert verdict.passed, verdict.reasons
    with rec.step("register"):
        model = register_version(trained, verdict, evaluation, mlflow_server=server, workspace=ws)
    with rec.step("deploy"):
        promote(model, evaluation, verdict, mlflow_server=server, workspace=ws)
    current = ingest_dataset(cfg["current"], name=f"{MODEL}-current", workspace=ws)  # not timed: set-up
    with rec.step("drift-check"):
        drift = check_drift(current, ref, model_name=MODEL, columns=cfg["features"].feature_columns,
                            workspace=ws, **({"sample_rows": opts["sample_rows"]} if opts.get("sample_rows")
                                             else {}))
    rec.sampler.stop()
    steps = rec.steps
    steps["train"]["fit_seconds"] = fitted - started
    steps["train"]["log_seconds"] = logged - fitted
    return {"steps": steps, "imports": imports, "imports_gx_evidently": imports_gx_evidently,
            "mlflow_init": mlflow_init, "drift_detected": drift.detected,
            "cycle_seconds": sum(s["seconds"] for k, s in steps.items() if k != "drift-check"),
            "peak_rss": peak_rss_bytes(), "folder": str(folder)}


def mode_flow(opts: dict[str, Any]) -> dict[str, Any]:
    """The CT cycle through `prefect_mlops.flows.continuous_training` (embedded API or PREFECT_API_URL)."""
    from prefect import flow

    from prefect_mlops.flows import continuous_training
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    folder = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    cfg = configs(opts["rows"], folder)
    mlflow_init = init_mlflow(cfg["server"], Workspace(cfg["workspace"]))

    @flow(name="bench-noop")
    def noop() -> int:
        return 1

    started = time.perf_counter()
    noop()
    first = time.perf_counter() - started
    started = time.perf_counter()
    noop()
    second = time.perf_counter() - started
    rss_before = rss_bytes()
    started = time.perf_counter()
    report = continuous_training(MODEL, cfg["source"], cfg["features"], cfg["trainer"], policy=cfg["policy"],
                                 suite_path=cfg["suite"], mlflow_server=cfg["server"],
                                 workspace=cfg["workspace"])
    cycle = time.perf_counter() - started
    assert report.outcome == "promoted", report
    return {"cycle_seconds": cycle, "first_flow_seconds": first, "second_flow_seconds": second,
            "startup_seconds": first - second, "imports": imports, "mlflow_init": mlflow_init,
            "rss_before_cycle": rss_before, "peak_rss": peak_rss_bytes(),
            "api": os.environ.get("PREFECT_API_URL") or "embedded", "folder": str(folder)}


def mode_plain(opts: dict[str, Any]) -> dict[str, Any]:
    """The floor: the same cycle as one plain script with the same libraries, no Prefect, no plugin."""
    import numpy as np
    import pyarrow.parquet as pq
    from mlflow import MlflowClient
    from sklearn import metrics
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    imports = preimport()
    import mlflow.sklearn
    from mlflow.models import infer_signature

    folder = Path(tempfile.mkdtemp(prefix="bench-plain-"))
    rows = opts["rows"]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    started = time.perf_counter()
    experiment = client.create_experiment("bench", artifact_location=(folder / "mlartifacts").as_uri())
    mlflow_init = time.perf_counter() - started
    suite = json.loads(Path(configs(rows, folder)["suite"]).read_text())
    pip = requirements()
    rec = Recorder()
    cycle_started = time.perf_counter()
    with rec.step("read"):
        frame = pq.read_table(data.path_for(rows)).to_pandas()
    with rec.step("validate"):
        if opts.get("validate", "gx") == "gx":
            failed = gx_validate(frame, suite)
        else:
            failed = arrow_validate(pq.read_table(data.path_for(rows)), suite)
    assert not failed, failed
    with rec.step("split"):
        size = round(len(frame) * 0.2)
        order = np.argsort(frame[data.TIME].to_numpy(), kind="stable")
        holdout = np.zeros(len(frame), dtype=bool)
        holdout[order[len(frame) - size:]] = True
        feature_columns = [*data.NUMERIC, *data.CATEGORICAL]
        train, test = frame.loc[~holdout], frame.loc[holdout]
        del frame
    with rec.step("fit"):
        transform = ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), data.NUMERIC),
            ("categorical", make_pipeline(SimpleImputer(strategy="constant", fill_value="__missing__"),
                                          OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                                        max_categories=100)), data.CATEGORICAL),
        ], remainder="drop", verbose_feature_names_out=False)
        pipeline = Pipeline([("features", transform),
                             ("model", HistGradientBoostingClassifier(random_state=0, **TRAINER_PARAMS))])
        pipeline.fit(train[feature_columns], train[data.TARGET])
        example = train[feature_columns].head(5)
        del train
    with rec.step("evaluate"):
        y = test[data.TARGET].to_numpy()
        proba = pipeline.predict_proba(test[feature_columns])
        labels = pipeline.classes_[proba.argmax(axis=1)]
        scores = {"accuracy": metrics.accuracy_score(y, labels), "f1": metrics.f1_score(y, labels),
                  "roc_auc": metrics.roc_auc_score(y, proba[:, 1]), "log_loss": metrics.log_loss(y, proba)}
        for _, part in test.groupby(data.SLICE, observed=True).indices.items():
            metrics.roc_auc_score(y[part], proba[part, 1])
    with rec.step("mlflow-log"):
        run = client.create_run(experiment, run_name="plain")
        for key, value in {"estimator": "HistGradientBoostingClassifier", **TRAINER_PARAMS}.items():
            client.log_param(run.info.run_id, key, str(value))
        for key, value in scores.items():
            client.log_metric(run.info.run_id, key, float(value))
        signature = infer_signature(example, pipeline.predict(example))
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.sklearn.save_model(pipeline, f"{tmp}/model", serialization_format="cloudpickle",
                                      signature=signature, input_example=example, pip_requirements=pip)
            client.log_artifacts(run.info.run_id, f"{tmp}/model", artifact_path="model")
        client.set_terminated(run.info.run_id, "FINISHED")
    with rec.step("register"):
        client.create_registered_model(MODEL)
        version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model",
                                              run_id=run.info.run_id)
        client.set_registered_model_alias(MODEL, "champion", version.version)
    cycle = time.perf_counter() - cycle_started
    rec.sampler.stop()
    return {"cycle_seconds": cycle, "steps": rec.steps, "imports": imports, "mlflow_init": mlflow_init,
            "peak_rss": peak_rss_bytes(), "folder": str(folder)}


def gx_validate(frame: Any, suite_json: dict[str, Any]) -> list[str]:
    """GX, called directly: the same ephemeral context and suite that `validate` runs."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("plain").add_dataframe_asset("frame")
             .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(gx.ExpectationSuite(**{**suite_json, "name": "suite"}))
    result = gx.ValidationDefinition(data=batch, suite=suite, name="v").run(batch_parameters={"dataframe": frame})
    return [r.expectation_config.type for r in result.results if not r.success]


def arrow_validate(table: Any, suite_json: dict[str, Any]) -> list[str]:
    """The validation floor: every expectation of the learned suite, one pass of pyarrow.compute per column.

    Per column: type, null count, min/max (numbers) or the count of values outside the set
    (categories); the row count once. No pandas, no GX.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    failed = []
    rows = table.num_rows
    by_column: dict[str, list[dict[str, Any]]] = {}
    for expectation in suite_json["expectations"]:
        kwargs = expectation["kwargs"]
        if expectation["type"] == "expect_table_row_count_to_be_between":
            if not kwargs["min_value"] <= rows <= kwargs["max_value"]:
                failed.append("row_count")
        else:
            by_column.setdefault(kwargs["column"], []).append(expectation)
    for column, expectations in by_column.items():
        if column not in table.column_names:
            failed.append(f"{column}: missing")
            continue
        values = table.column(column)
        nulls = values.null_count
        if pa.types.is_floating(values.type):
            nulls += pc.sum(pc.is_nan(values)).as_py() or 0
        nonnull = rows - nulls
        for expectation in expectations:
            kind, kwargs = expectation["type"], expectation["kwargs"]
            mostly = kwargs.get("mostly", 1.0)
            if kind == "expect_column_values_to_not_be_null":
                ok = (rows - nulls) >= mostly * rows
            elif kind == "expect_column_values_to_be_between":
                bad = pc.sum(pc.or_(pc.less(values, kwargs["min_value"]),
                                    pc.greater(values, kwargs["max_value"]))).as_py() or 0
                ok = nonnull == 0 or (nonnull - bad) >= mostly * nonnull
            elif kind == "expect_column_values_to_be_in_set":
                inside = pc.sum(pc.is_in(values, value_set=pa.array(kwargs["value_set"]))).as_py() or 0
                ok = nonnull == 0 or inside >= mostly * nonnull
            else:  # column exists, type list: schema facts, no data pass
                ok = True
            if not ok:
                failed.append(f"{column}: {kind}")
    return failed


def mode_validate(opts: dict[str, Any]) -> dict[str, Any]:
    """One validation configuration: our `validate_dataset`, GX alone on a pandas frame, or the pyarrow floor."""
    import pyarrow.parquet as pq

    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    rows, variant = opts["rows"], opts["variant"]
    folder = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    cfg = configs(rows, folder)
    suite = json.loads(Path(cfg["suite"]).read_text())
    ref = DatasetRef(name=MODEL, uri=str(data.path_for(rows)), fingerprint="0" * 64, rows=rows, columns={})
    rec = Recorder()
    outcomes = None
    if variant in ("ours", "gx-only"):
        import great_expectations  # noqa: F401 - first import is not the stage's cost

        from prefect_mlops.tasks import validate as validate_module

        with rec.step("validate"):
            if variant == "ours":
                report = validate_module.validate_dataset(ref, suite_path=cfg["suite"], workspace=Workspace(
                    cfg["workspace"]))
            else:  # everything through GX (what the stage did before push-down)
                with gx_only(validate_module):
                    report = validate_module.validate_dataset(ref, suite_path=cfg["suite"],
                                                              workspace=Workspace(cfg["workspace"]))
        failed = [o.expectation for o in report.failures]
        outcomes = len(report.outcomes)
    else:
        with rec.step("validate"):
            failed = arrow_validate(pq.read_table(data.path_for(rows)), suite)
    rec.sampler.stop()
    return {"seconds": rec.steps["validate"]["seconds"], "rss_peak": rec.steps["validate"]["rss_peak"],
            "rss_start": rec.steps["validate"]["rss_start"], "failed": failed, "outcomes": outcomes,
            "expectations": len(suite["expectations"]), "imports": imports, "peak_rss": peak_rss_bytes()}


@contextmanager
def gx_only(module: Any):
    """Run every expectation through GX (the push-down switched off), if the module has the switch."""
    saved = getattr(module, "PUSHDOWN", None)
    if saved is not None:
        module.PUSHDOWN = False
    try:
        yield
    finally:
        if saved is not None:
            module.PUSHDOWN = saved


def mode_drift(opts: dict[str, Any]) -> dict[str, Any]:
    """One drift configuration: our `check_drift` (Evidently), optionally sampled, or the numpy/scipy floor."""
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    rows, variant = opts["rows"], opts["variant"]
    folder = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    columns = [*data.NUMERIC, *data.CATEGORICAL]
    ref = DatasetRef(name=MODEL, uri=str(data.path_for(rows)), fingerprint="0" * 64, rows=rows,
                     columns={c: "x" for c in data.COLUMNS})
    current = DatasetRef(name=f"{MODEL}-current", uri=str(data.path_for(rows, drifted=True)),
                         fingerprint="1" * 64, rows=rows, columns={c: "x" for c in data.COLUMNS})
    rec = Recorder()
    extra: dict[str, Any] = {}
    if variant == "floor":
        import scipy.stats  # noqa: F401

        with rec.step("drift"):
            result = drift_floor(ref.uri, current.uri, columns)
        extra["drifted"] = sorted(c for c, r in result.items() if r["drifted"])
    else:
        import evidently  # noqa: F401 - first import is not the stage's cost

        from prefect_mlops.tasks.drift import check_drift

        sample = opts.get("sample_rows")
        with rec.step("drift"):
            report = check_drift(current, ref, model_name=MODEL, columns=columns, workspace=Workspace(
                folder / "workspace"), **({"sample_rows": sample} if sample else {}))
        extra["drifted"] = sorted(report.drifted_columns)
        extra["methods"] = sorted({c.method for c in report.columns})
    rec.sampler.stop()
    return {"seconds": rec.steps["drift"]["seconds"], "rss_peak": rec.steps["drift"]["rss_peak"],
            "rss_start": rec.steps["drift"]["rss_start"], "imports": imports, "peak_rss": peak_rss_bytes(),
            **extra}


def drift_floor(reference_uri: str, current_uri: str, columns: list[str]) -> dict[str, dict[str, float]]:
    """The drift floor: per column, KS test + PSI (numbers) or chi-squared + PSI (categories), numpy/scipy."""
    import numpy as np
    import pyarrow.parquet as pq
    from scipy import stats

    reference = pq.read_table(reference_uri, columns=columns)
    current = pq.read_table(current_uri, columns=columns)
    out = {}
    for column in columns:
        ref_col, cur_col = reference.column(column), current.column(column)
        if ref_col.type.id in (8, 9, 10, 11, 12):  # ints and floats: pyarrow Type ids are stable
            ref_values = ref_col.to_numpy(zero_copy_only=False)
            cur_values = cur_col.to_numpy(zero_copy_only=False)
            ref_values = ref_values[~np.isnan(ref_values)]
            cur_values = cur_values[~np.isnan(cur_values)]
            p_value = stats.ks_2samp(ref_values, cur_values).pvalue
            edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, 11)))
            ref_share = np.histogram(ref_values, edges)[0] / len(ref_values)
            cur_share = np.histogram(np.clip(cur_values, edges[0], edges[-1]), edges)[0] / len(cur_values)
        else:
            ref_codes = ref_col.combine_chunks().dictionary_encode()
            cur_codes = cur_col.combine_chunks().dictionary_encode()
            keys = sorted(set(ref_codes.dictionary.to_pylist()) | set(cur_codes.dictionary.to_pylist()))
            ref_counts = _counts(ref_codes, keys)
            cur_counts = _counts(cur_codes, keys)
            p_value = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]) + 0.5)[1]
            ref_share, cur_share = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
        ref_share, cur_share = np.clip(ref_share, 1e-4, None), np.clip(cur_share, 1e-4, None)
        psi = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
        out[column] = {"p_value": float(p_value), "psi": psi, "drifted": bool(p_value < 0.05 or psi >= 0.1)}
    return out


def _counts(encoded: Any, keys: list[str]) -> Any:
    import numpy as np

    position = {key: i for i, key in enumerate(keys)}
    local = np.bincount(encoded.indices.to_numpy(zero_copy_only=False).astype("int64"),
                        minlength=len(encoded.dictionary))
    counts = np.zeros(len(keys))
    for i, key in enumerate(encoded.dictionary.to_pylist()):
        counts[position[key]] = local[i]
    return counts


def mode_import(opts: dict[str, Any]) -> dict[str, Any]:
    """Time one import statement in this fresh process."""
    import importlib

    started = time.perf_counter()
    importlib.import_module(opts["module"])
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss_bytes()}


def mode_mlflow(opts: dict[str, Any]) -> dict[str, Any]:
    """MLflow costs apart from the stages: save a model with and without pip_requirements; register it."""
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks.features import make_transform
    from prefect_mlops.workspace import read_frame

    preimport()
    folder = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    cfg = configs(opts["rows"], folder)
    from prefect_mlops.refs import DatasetRef

    ref = DatasetRef(name=MODEL, uri=str(data.path_for(opts["rows"])), fingerprint="0", rows=0, columns={})
    frame = read_frame(ref)
    spec = cfg["features"]
    pipeline = Pipeline([("features", make_transform(spec)),
                         ("model", HistGradientBoostingClassifier(random_state=0, **TRAINER_PARAMS))])
    x = frame[spec.feature_columns]
    pipeline.fit(x, frame[spec.target])
    example = x.head(5)
    signature = infer_signature(example, pipeline.predict(example))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    started = time.perf_counter()
    experiment = client.create_experiment("bench", artifact_location=(folder / "mlartifacts").as_uri())
    store_init = time.perf_counter() - started
    out: dict[str, Any] = {"store_init_seconds": store_init}
    for label, pip in (("explicit", requirements()), ("inferred", None), ("explicit-2", requirements()),
                       ("inferred-2", None)):
        started = time.perf_counter()
        mlflow.sklearn.save_model(pipeline, str(folder / label), serialization_format="cloudpickle",
                                  signature=signature, input_example=example, pip_requirements=pip)
        out[f"save_{label}_seconds"] = time.perf_counter() - started
    out["inferred_requirements"] = (folder / "inferred" / "requirements.txt").read_text().split()
    run = client.create_run(experiment)
    started = time.perf_counter()
    client.log_artifacts(run.info.run_id, str(folder / "explicit"), artifact_path="model")
    client.set_terminated(run.info.run_id)
    out["log_artifacts_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    out["register_seconds"] = time.perf_counter() - started
    return out


def mode_wrapper(opts: dict[str, Any]) -> dict[str, Any]:
    """Per stage: the task's plain body (`task.fn`) against the task call, both inside one flow run."""
    from prefect import flow

    from prefect_mlops.tasks import deploy, drift, evaluate, features, gate, ingest, register, train, validate
    from prefect_mlops.tasks.lineage import Lineage, recipe_digest
    from prefect_mlops.workspace import Workspace

    preimport()
    import evidently  # noqa: F401
    import great_expectations  # noqa: F401

    folder = Path(tempfile.mkdtemp(prefix="bench-wrapper-"))
    rows, repeat = opts["rows"], opts.get("repeat", 5)
    cfg = configs(rows, folder)
    server, ws_path = cfg["server"], cfg["workspace"]
    init_mlflow(server, Workspace(ws_path))
    times: dict[str, dict[str, list[float]]] = {}

    def measure(name: str, task: Any, *args: Any, before: Any = None, **kwargs: Any) -> Any:
        result = None
        for _ in range(repeat):
            for how in ("fn", "task"):
                if before is not None:
                    before()
                started = time.perf_counter()
                if how == "fn":
                    result = task.fn(*args, **kwargs)
                else:
                    state = task(*args, return_state=True, **kwargs)
                    assert state.name == "Completed", (name, state)
                    result = state.result()
                times.setdefault(name, {}).setdefault(how, []).append(time.perf_counter() - started)
        return result

    @flow(name="bench-wrapper")
    def run() -> None:
        ref = measure("ingest", ingest.ingest, cfg["source"], name=MODEL, workspace=ws_path)
        measure("validate", validate.validate, ref, suite_path=cfg["suite"], workspace=ws_path)
        feature_set = measure("feature-build", features.feature_build, ref, cfg["features"], workspace=ws_path)
        lineage = Lineage(model_name=MODEL, dataset=ref, features=cfg["features"], trainer=cfg["trainer"],
                          params_digest=recipe_digest(cfg["features"], cfg["trainer"]))
        trained = measure("train", train.train, feature_set, cfg["trainer"], lineage, mlflow_server=server,
                          workspace=ws_path)
        evaluation = measure("evaluate", evaluate.evaluate, trained, feature_set, policy=cfg["policy"],
                             mlflow_server=server, workspace=ws_path)
        verdict = measure("gate", gate.quality_gate, evaluation, cfg["policy"])
        model = measure("register", register.register, trained, verdict, evaluation, mlflow_server=server,
                        workspace=ws_path)
        client = server.client(Workspace(ws_path))
        measure("deploy", deploy.deploy, model, evaluation, verdict, mlflow_server=server, workspace=ws_path,
                before=lambda: client.set_registered_model_alias(MODEL, "challenger", model.version))
        current = ingest.ingest.fn(cfg["current"], name=f"{MODEL}-current", workspace=ws_path)
        measure("drift-check", drift.drift_check, current, ref, MODEL, columns=cfg["features"].feature_columns,
                workspace=ws_path)

    run()
    summary = {}
    for name, pair in times.items():
        fn, task = statistics.median(pair["fn"]), statistics.median(pair["task"])
        summary[name] = {"fn_seconds": fn, "task_seconds": task, "overhead_seconds": task - fn,
                         "fn_all": pair["fn"], "task_all": pair["task"]}
    return {"stages": summary, "repeat": repeat, "rows": rows}


MODES = {"stages": mode_stages, "flow": mode_flow, "plain": mode_plain, "validate": mode_validate,
         "drift": mode_drift, "import": mode_import, "mlflow": mode_mlflow, "wrapper": mode_wrapper}


def main() -> None:
    mode, opts = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    if mode != "import":
        environment()
    result = MODES[mode](opts)
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
