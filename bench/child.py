"""One benchmark configuration, run in a fresh process by `bench/run.py`; prints one JSON line.

`python bench/child.py <mode> '<json options>'`. Every mode times only its own work (imports
and set-up are timed apart or not at all) and reports the process's peak RSS
(`ru_maxrss`), plus the peak RSS seen during each stage by a sampling thread.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data

MODEL = "bench"
TRAINER_PARAMS = {"max_iter": 30, "learning_rate": 0.1, "early_stopping": False}
RESULT_TAG = "BENCH-RESULT "
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM. (`ru_maxrss` would do, but Linux carries it over `exec` from the
    parent, so a child of a big parent would report the parent's peak.)"""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_TICK = os.sysconf("SC_CLK_TCK")


def helper_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of the API server's processes: the local server's process group
    (BENCH_SERVER_PGID), else this process's descendants (the embedded API runs in a subprocess)."""
    group = int(os.environ.get("BENCH_SERVER_PGID") or 0)
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK)
    if group:
        return {pid: cpu for pid, (_, pgrp, cpu) in stats.items() if pgrp == group}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found[pid] = stats[pid][2]
        todo += children.get(pid, [])
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


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
    """Create the experiment in a copy of the migrated store template (migrations are timed once, apart)."""
    template = os.environ.get("BENCH_MLFLOW_TEMPLATE")
    target = Path(server.tracking_uri.removeprefix("sqlite:///"))
    if template and not target.exists():
        shutil.copyfile(template, target)
    started = time.perf_counter()
    server.experiment_id(workspace)
    return time.perf_counter() - started


def mode_store(opts: dict[str, Any]) -> dict[str, Any]:
    """Create an empty MLflow SQLite store (the schema migrations) at opts['path']."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{opts['path']}"
    started = time.perf_counter()
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return {"seconds": time.perf_counter() - started}


def preimport() -> float:
    """Import what the plain script and the plugin both use, so no cycle time holds their first import."""
    started = time.perf_counter()
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.ensemble
    import sklearn.metrics  # noqa: F401
    return time.perf_counter() - started


def requirements(*, skops: bool = False) -> list[str]:
    from prefect_mlops.tasks.lineage import TrainerSpec
    from prefect_mlops.tasks.train import _requirements

    return _requirements(TrainerSpec(), skops=skops)


def instrument_fit() -> list[float]:
    """Record the wall time of every `Pipeline.fit` (the training itself), in the flow and the plain script
    alike: the rest of a cycle, its overhead, can then be compared without the noise of the fit's time."""
    from sklearn.pipeline import Pipeline

    spent: list[float] = []
    original = Pipeline.fit

    @functools.wraps(original)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    Pipeline.fit = fit
    return spent


def workdir(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=os.environ.get("BENCH_TMP")))


# ---------------------------------------------------------------------------------------------- cycles
def mode_stages(opts: dict[str, Any]) -> dict[str, Any]:
    """The CT stages' plain functions in sequence, as the flow orders them (drift-check: `mode_drift`)."""
    imports = preimport()
    started = time.perf_counter()
    import great_expectations  # noqa: F401 - timed here, not inside validate

    from prefect_mlops.tasks.deploy import promote
    from prefect_mlops.tasks.evaluate import evaluate_models
    from prefect_mlops.tasks.features import build_feature_set
    from prefect_mlops.tasks.gate import judge
    from prefect_mlops.tasks.ingest import ingest_dataset
    from prefect_mlops.tasks.lineage import Lineage, recipe_digest
    from prefect_mlops.tasks.register import register_version
    from prefect_mlops.tasks.train import fit_pipeline, log_model
    from prefect_mlops.tasks.validate import validate_dataset
    from prefect_mlops.workspace import Workspace

    imports_plugin = time.perf_counter() - started
    folder = workdir("stages")
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
    with rec.step("evaluate"):
        evaluation = evaluate_models(trained, features, policy=cfg["policy"], mlflow_server=server, workspace=ws)
    with rec.step("gate"):
        verdict = judge(evaluation, cfg["policy"])
    assert verdict.passed, verdict.reasons
    with rec.step("register"):
        model = register_version(trained, verdict, evaluation, mlflow_server=server, workspace=ws)
    with rec.step("deploy"):
        promote(model, evaluation, verdict, mlflow_server=server, workspace=ws)
    rec.sampler.stop()
    steps = rec.steps
    steps["train"]["fit_seconds"] = fitted - started
    steps["train"]["log_seconds"] = logged - fitted
    out = {"steps": steps, "imports": imports, "imports_plugin_and_gx": imports_plugin, "mlflow_init": mlflow_init,
           "cycle_seconds": sum(s["seconds"] for s in steps.values()), "peak_rss": peak_rss_bytes(),
           "validation_outcomes": len(report.outcomes)}
    return out


def mode_mlflow(opts: dict[str, Any]) -> dict[str, Any]:
    """MLflow apart from the stages, in a fresh process: save_model with and without pip_requirements
    (in the order given: the first save in a process also pays MLflow's scan of the installed
    distributions, done even when the requirements are given), then log_artifacts and register."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.features import make_transform
    from prefect_mlops.workspace import Workspace, read_frame

    preimport()
    folder = workdir("mlflow")
    cfg = configs(opts["rows"], folder)
    spec, server = cfg["features"], cfg["server"]
    frame = read_frame(DatasetRef(name=MODEL, uri=str(data.path_for(opts["rows"])), fingerprint="0", rows=0,
                                  columns={}))
    pipeline = Pipeline([("features", make_transform(spec)),
                         ("model", HistGradientBoostingClassifier(random_state=0, **TRAINER_PARAMS))])
    x = frame[spec.feature_columns]
    pipeline.fit(x, frame[spec.target])
    example = x.head(5)
    signature = infer_signature(example, pipeline.predict(example))
    out: dict[str, Any] = {"order": opts["order"]}
    for i, label in enumerate(opts["order"]):
        started = time.perf_counter()
        mlflow.sklearn.save_model(pipeline, str(folder / f"model-{i}"), serialization_format="cloudpickle",
                                  signature=signature, input_example=example,
                                  pip_requirements=requirements() if label == "explicit" else None)
        out.setdefault(f"save_{label}_seconds", []).append(time.perf_counter() - started)
        if label == "inferred":
            out["inferred_requirements"] = (folder / f"model-{i}" / "requirements.txt").read_text().split()
    init_mlflow(server, Workspace(cfg["workspace"]))
    client = server.client()
    run = client.create_run(server.experiment_id())
    started = time.perf_counter()
    client.log_artifacts(run.info.run_id, str(folder / "model-0"), artifact_path="model")
    client.set_terminated(run.info.run_id)
    out["log_artifacts_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    out["register_seconds"] = time.perf_counter() - started
    return out


def mode_flow(opts: dict[str, Any]) -> dict[str, Any]:
    """The CT cycle through `prefect_mlops.flows.continuous_training` (embedded API, or PREFECT_API_URL)."""
    imports = preimport()
    started = time.perf_counter()
    from prefect import flow

    from prefect_mlops.flows import continuous_training
    from prefect_mlops.workspace import Workspace

    imports_plugin = time.perf_counter() - started
    folder = workdir("flow")
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
    fits = instrument_fit()
    helpers, cpu = helper_cpu(), time.process_time()
    started = time.perf_counter()
    from prefect_mlops.blocks import RetrainPolicy

    # The floor fits once, on the train part: so does the flow unless asked (the refit on the whole window
    # is a second fit, as long again, that the plain script does not do).
    retrain = RetrainPolicy(refit_full_window=bool(opts.get("refit", False)))
    report = continuous_training(MODEL, cfg["source"], cfg["features"], cfg["trainer"], policy=cfg["policy"],
                                 suite_path=cfg["suite"], mlflow_server=cfg["server"],
                                 workspace=cfg["workspace"], retrain_policy=retrain)
    cycle = time.perf_counter() - started
    cpu, helpers = time.process_time() - cpu, cpu_delta(helpers, helper_cpu())
    assert report.outcome == "promoted", report
    out = {"cycle_seconds": cycle, "cycle_cpu_seconds": cpu, "api_cpu_seconds": helpers, "fit_seconds": sum(fits),
           "first_flow_seconds": first, "second_flow_seconds": second,
           "startup_seconds": first - second, "imports": imports, "imports_plugin": imports_plugin,
           "mlflow_init": mlflow_init, "rss_before_cycle": rss_before, "peak_rss": peak_rss_bytes(),
           "api": os.environ.get("PREFECT_API_URL") or "embedded"}
    if opts.get("wrapper_rows"):
        out["wrapper"] = wrapper_overhead(opts["wrapper_rows"], opts.get("wrapper_repeat", 3))
    return out


def mode_plain(opts: dict[str, Any]) -> dict[str, Any]:
    """The floor: the same cycle as one plain script with the same libraries, no Prefect, no plugin.

    Read Parquet once; the learned suite's checks in pyarrow (the validation floor); the
    same time-ordered hold-out; the same pipeline and estimator; hold-out metrics overall
    and per slice; log to MLflow with explicit pip_requirements; register; set the alias.
    The model is saved as the flow saves it: with skops, trusting the same types (a load that
    runs no code from the file), or with `opts["format"] = "cloudpickle"`, as a script that
    does not give that guarantee would.
    """
    started = time.perf_counter()
    import numpy as np
    import pyarrow.parquet as pq
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn import metrics
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    imports = preimport() + (time.perf_counter() - started)
    import mlflow.sklearn

    folder = workdir("plain")
    rows = opts["rows"]
    db = folder / "mlflow.db"
    if os.environ.get("BENCH_MLFLOW_TEMPLATE"):
        shutil.copyfile(os.environ["BENCH_MLFLOW_TEMPLATE"], db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    started = time.perf_counter()
    experiment = client.create_experiment("bench", artifact_location=(folder / "mlartifacts").as_uri())
    mlflow_init = time.perf_counter() - started
    suite = json.loads(Path(configs(rows, folder)["suite"]).read_text())
    fmt = opts.get("format", "skops")
    pip = requirements(skops=fmt == "skops")
    save_options: dict[str, Any] = {"serialization_format": fmt}
    if fmt == "skops":
        from prefect_mlops.tasks.train import SKOPS_TRUSTED

        save_options["skops_trusted_types"] = list(SKOPS_TRUSTED)
    fits = instrument_fit()
    rec = Recorder()
    cpu = time.process_time()
    cycle_started = time.perf_counter()
    with rec.step("read"):
        table = pq.read_table(data.path_for(rows))
    with rec.step("validate"):
        failed = arrow_validate(table, suite)
    assert not failed, failed
    with rec.step("to-pandas"):
        frame = table.to_pandas()
        del table
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
        for part in test.groupby(data.SLICE, observed=True).indices.values():
            metrics.roc_auc_score(y[part], proba[part, 1])
            metrics.log_loss(y[part], proba[part], labels=pipeline.classes_)
    with rec.step("mlflow-log"):
        run = client.create_run(experiment, run_name="plain")
        for key, value in {"estimator": "HistGradientBoostingClassifier", **TRAINER_PARAMS}.items():
            client.log_param(run.info.run_id, key, str(value))
        for key, value in scores.items():
            client.log_metric(run.info.run_id, key, float(value))
        signature = infer_signature(example, pipeline.predict(example))
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.sklearn.save_model(pipeline, f"{tmp}/model", signature=signature, input_example=example,
                                      pip_requirements=pip, **save_options)
            client.log_artifacts(run.info.run_id, f"{tmp}/model", artifact_path="model")
        client.set_terminated(run.info.run_id, "FINISHED")
    with rec.step("register"):
        client.create_registered_model(MODEL)
        version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model",
                                              run_id=run.info.run_id)
        client.set_registered_model_alias(MODEL, "champion", version.version)
    cycle = time.perf_counter() - cycle_started
    cpu = time.process_time() - cpu
    rec.sampler.stop()
    return {"cycle_seconds": cycle, "cycle_cpu_seconds": cpu, "fit_seconds": sum(fits), "steps": rec.steps,
            "imports": imports,
            "mlflow_init": mlflow_init, "peak_rss": peak_rss_bytes()}


# ---------------------------------------------------------------------------------------------- floors
def arrow_validate(table: Any, suite_json: dict[str, Any]) -> list[str]:
    """The validation floor: the learned suite's checks in one pass of pyarrow.compute per column.

    Row count once; per column: presence and type from the schema, the null count, values
    outside [min, max] (numbers) or outside the set (categories). No pandas, no GX, no
    unexpected-value samples: only pass or fail.
    """
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.compute as pc

    failed = []
    rows = table.num_rows
    by_column: dict[str, list[dict[str, Any]]] = {}
    for expectation in suite_json["expectations"]:
        kwargs = expectation["kwargs"]
        if expectation["type"] == "expect_table_row_count_to_be_between":
            if not kwargs.get("min_value", 0) <= rows <= kwargs.get("max_value", rows):
                failed.append("row_count")
        else:
            by_column.setdefault(kwargs["column"], []).append(expectation)
    for column, expectations in by_column.items():
        if column not in table.column_names:
            failed.append(f"{column}: missing")
            continue
        values = table.column(column)
        missing = values.null_count
        if pa.types.is_floating(values.type):
            missing += pc.sum(pc.is_nan(values)).as_py() or 0
        present = rows - missing
        for expectation in expectations:
            kind, kwargs = expectation["type"], expectation["kwargs"]
            mostly = kwargs.get("mostly", 1.0)
            if kind == "expect_column_values_to_not_be_null":
                ok = present >= mostly * rows
            elif kind == "expect_column_values_to_be_between":
                bad = pc.sum(pc.or_(pc.less(values, kwargs["min_value"]),
                                    pc.greater(values, kwargs["max_value"]))).as_py() or 0
                ok = present == 0 or (present - bad) >= mostly * present
            elif kind == "expect_column_values_to_be_in_set":
                inside = pc.sum(pc.is_in(values, value_set=pa.array(kwargs["value_set"]))).as_py() or 0
                ok = present == 0 or inside >= mostly * present
            elif kind == "expect_column_value_lengths_to_be_between":
                ok = (pc.max(pc.utf8_length(values)).as_py() or 0) <= kwargs["max_value"]
            elif kind in ("expect_column_min_to_be_between", "expect_column_max_to_be_between"):
                extremes = pc.min_max(values)
                low, high = kwargs.get("min_value"), kwargs.get("max_value")
                ok = (low is None or extremes["min"].as_py() >= datetime.fromisoformat(low)) and (
                    high is None or extremes["max"].as_py() <= datetime.fromisoformat(high))
            else:  # column exists, type list: schema facts, no pass over the data
                ok = True
            if not ok:
                failed.append(f"{column}: {kind}")
    return failed


def drift_floor(reference_uri: str, current_uri: str, columns: list[str]) -> dict[str, dict[str, Any]]:
    """The drift floor: per column, KS test + PSI (numbers) or chi-squared + PSI (categories), numpy/scipy."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy import stats

    reference = pq.read_table(reference_uri, columns=columns)
    current = pq.read_table(current_uri, columns=columns)
    out = {}
    for column in columns:
        ref_col, cur_col = reference.column(column), current.column(column)
        if pa.types.is_integer(ref_col.type) or pa.types.is_floating(ref_col.type):
            ref_values = ref_col.to_numpy().astype("float64")
            cur_values = cur_col.to_numpy().astype("float64")
            ref_values, cur_values = ref_values[~np.isnan(ref_values)], cur_values[~np.isnan(cur_values)]
            p_value = stats.ks_2samp(ref_values, cur_values).pvalue
            edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, 11)))
            ref_share = np.histogram(ref_values, edges)[0] / len(ref_values)
            cur_share = np.histogram(np.clip(cur_values, edges[0], edges[-1]), edges)[0] / len(cur_values)
        else:
            ref_counts, cur_counts = _category_counts(ref_col, cur_col)
            p_value = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]) + 0.5)[1]
            ref_share, cur_share = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
        ref_share, cur_share = np.clip(ref_share, 1e-4, None), np.clip(cur_share, 1e-4, None)
        psi = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
        out[column] = {"p_value": float(p_value), "psi": psi, "drifted": bool(p_value < 0.05 or psi >= 0.1)}
    return out


def _category_counts(reference: Any, current: Any) -> tuple[Any, Any]:
    import numpy as np
    import pyarrow.compute as pc

    ref_counts, cur_counts = pc.value_counts(reference), pc.value_counts(current)
    keys = sorted(set(ref_counts.field("values").to_pylist()) | set(cur_counts.field("values").to_pylist()),
                  key=str)
    position = {key: i for i, key in enumerate(keys)}
    out = []
    for counts in (ref_counts, cur_counts):
        row = np.zeros(len(keys))
        for key, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            row[position[key]] = count
        out.append(row)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- micro
def mode_validate(opts: dict[str, Any]) -> dict[str, Any]:
    """Validation variants in one process, after a warm-up read: ours, GX on every expectation, the floor."""
    import pyarrow.parquet as pq

    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks import validate as validate_module
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    started = time.perf_counter()
    import great_expectations  # noqa: F401 - not the stage's cost; reported apart
    gx_import = time.perf_counter() - started
    rows = opts["rows"]
    folder = workdir("validate")
    cfg = configs(rows, folder)
    suite = json.loads(Path(cfg["suite"]).read_text())
    ref = DatasetRef(name=MODEL, uri=str(data.path_for(rows)), fingerprint="0" * 64, rows=rows, columns={})
    pq.read_table(ref.uri).to_pandas()  # warm-up: page cache and allocator, for every variant alike
    rec = Recorder()
    out: dict[str, Any] = {"imports": imports, "gx_import": gx_import, "expectations": len(suite["expectations"])}
    for variant in opts["variants"]:
        gc_collect()
        with rec.step(variant):
            if variant == "floor":
                failed = arrow_validate(pq.read_table(ref.uri), suite)
            else:
                report = validate_module.validate_dataset(ref, suite_path=cfg["suite"],
                                                          workspace=Workspace(cfg["workspace"]),
                                                          engine="arrow" if variant == "ours" else "gx")
                failed = [o.expectation for o in report.failures]
                out[f"{variant}_outcomes"] = [o.model_dump() for o in report.outcomes]
        out[variant] = {**rec.steps[variant], "failed": failed}
    if "ours" in opts["variants"] and "gx" in opts["variants"]:
        out["same_table"] = out.pop("ours_outcomes") == out.pop("gx_outcomes")
    rec.sampler.stop()
    return out


def mode_drift(opts: dict[str, Any]) -> dict[str, Any]:
    """Drift variants in one process, after a warm-up read: Evidently on all rows, on a sample, the floor."""
    import pyarrow.parquet as pq

    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.workspace import Workspace

    imports = preimport()
    started = time.perf_counter()
    import evidently.presets  # noqa: F401 - not the stage's cost; reported apart
    import scipy.stats  # noqa: F401
    evidently_import = time.perf_counter() - started
    rows = opts["rows"]
    folder = workdir("drift")
    columns = [*data.NUMERIC, *data.CATEGORICAL]
    kinds = {c: "x" for c in data.COLUMNS}
    ref = DatasetRef(name=MODEL, uri=str(data.path_for(rows)), fingerprint="0" * 64, rows=rows, columns=kinds)
    current = DatasetRef(name=f"{MODEL}-current", uri=str(data.path_for(rows, drifted=True)),
                         fingerprint="1" * 64, rows=rows, columns=kinds)
    for uri in (ref.uri, current.uri):
        pq.read_table(uri, columns=columns).to_pandas()  # warm-up, for every variant alike
    rec = Recorder()
    out: dict[str, Any] = {"imports": imports, "evidently_import": evidently_import, "columns": len(columns)}
    for variant in opts["variants"]:
        gc_collect()
        with rec.step(variant):
            if variant == "floor":
                result = drift_floor(ref.uri, current.uri, columns)
                drifted = sorted(c for c, r in result.items() if r["drifted"])
            else:
                sample = None if variant == "evidently" else int(variant.split("-")[-1])
                report = check_drift(current, ref, model_name=MODEL, columns=columns,
                                     workspace=Workspace(folder / "workspace"), sample_rows=sample)
                drifted = sorted(report.drifted_columns)
                out.setdefault("methods", sorted({c.method for c in report.columns}))
                out[f"{variant}_share"] = report.drift_share
        out[variant] = {**rec.steps[variant], "drifted": drifted}
    rec.sampler.stop()
    return out


def gc_collect() -> None:
    import gc

    gc.collect()


def mode_import(opts: dict[str, Any]) -> dict[str, Any]:
    """Time one import statement in this fresh process (`module`, or `module:name,name` for a from-import)."""
    import importlib

    module, _, names = opts["module"].partition(":")
    started = time.perf_counter()
    imported = importlib.import_module(module)
    for name in filter(None, names.split(",")):
        getattr(imported, name)  # `from prefect import flow` loads prefect.flows lazily, like this
    return {"seconds": time.perf_counter() - started}


def wrapper_overhead(rows: int, repeat: int) -> dict[str, Any]:
    """Per stage: the task's body (`task.fn`) against the task call, both inside one flow run."""
    from prefect import flow

    from prefect_mlops.tasks import deploy, drift, evaluate, features, gate, ingest, register, train, validate
    from prefect_mlops.tasks.lineage import Lineage, recipe_digest
    from prefect_mlops.workspace import Workspace

    folder = workdir("wrapper")
    cfg = configs(rows, folder)
    server, ws_path = cfg["server"], cfg["workspace"]
    init_mlflow(server, Workspace(ws_path))
    times: dict[str, dict[str, list[float]]] = {}
    states: dict[str, list[str]] = {}

    def measure(name: str, task: Any, /, *args: Any, before: Any = None, **kwargs: Any) -> Any:
        """Overhead = the task call's wall time minus the time spent in the task's body during that call."""
        body = task.fn
        inside: list[float] = []

        @functools.wraps(body)
        def timed(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return body(*a, **k)
            finally:
                inside.append(time.perf_counter() - started)

        if before is not None:
            before()
        result = body(*args, **kwargs)  # warm-up: lazy imports and first-call caches
        fresh = task.with_options(refresh_cache=True)  # a cached stage (feature-build) runs, not a cache hit
        fresh.fn = timed
        try:
            for _ in range(repeat):
                if before is not None:
                    before()
                started = time.perf_counter()
                state = fresh(*args, return_state=True, **kwargs)
                total = time.perf_counter() - started
                result = state.result()
                states.setdefault(name, []).append(state.name)
                times.setdefault(name, {}).setdefault("task", []).append(total)
                times[name].setdefault("body", []).append(inside[-1] if inside else float("nan"))
                times[name].setdefault("overhead", []).append(total - (inside[-1] if inside else 0.0))
                inside.clear()
        finally:
            fresh.fn = body
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
    for name, got in times.items():
        summary[name] = {"overhead_seconds": statistics.median(got["overhead"]),
                         "body_seconds": statistics.median(got["body"]), "task_seconds": statistics.median(got["task"]),
                         "overhead_all": got["overhead"], "states": states.get(name)}
    return {"stages": summary, "repeat": repeat, "rows": rows}


MODES = {"stages": mode_stages, "flow": mode_flow, "plain": mode_plain, "validate": mode_validate,
         "drift": mode_drift, "import": mode_import, "store": mode_store, "mlflow": mode_mlflow}


def main() -> None:
    mode, opts = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    if mode != "import":
        environment()
    result = MODES[mode](opts)
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
