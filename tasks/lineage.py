"""Lineage: what data, code and parameters made a model, and how to find the champion's.

Every trained model carries a `Lineage` record (an MLflow run artifact, with its key facts
as tags on the run and the registered version). The continuous-training flow compares it
with new data to skip needless retraining; the drift monitor reads the champion's to find
its reference data and to retrain with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.retrain_policy import TrainingBudget
from prefect_mlops.errors import ConfigError, RegistryError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import DatasetRef, ModelRef, OptionalText, StrictModel
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.workspace import Workspace

TAG = "prefect_mlops"
LINEAGE_TAG = f"{TAG}.lineage"
"""Version and run tag: the lineage's facts as one JSON object (the full record is the run's lineage.json)."""
TRIGGER_TAG = f"{TAG}.trigger"
"""Version and run tag: what started the training, as JSON: {"kind": "drift", "event_id": ..., ...}."""
GATE_TAG = f"{TAG}.gate"
# The facts also kept as tags of their own: what a person filters the versions table by.
KEY_FACTS = ("data.fingerprint", "data.window", "trainer", "git_commit", "flow_run_id")
TRIGGER_KINDS = ("drift", "performance", "schedule", "stale", "manual")


class TrainerSpec(StrictModel):
    """Which estimator to fit, with which parameters and seed.

    `check()` imports the estimator class and checks the parameters without reading any data;
    the flows call it before any work starts.

    Example:
        ```python
        from prefect_mlops.tasks.train import TrainerSpec, build_estimator
        spec = TrainerSpec(estimator="sklearn.linear_model.LogisticRegression", params={"C": 0.5})
        spec.check()
        assert build_estimator(spec).C == 0.5
        ```
    """

    model_config = ConfigDict(frozen=True)
    _unknown_key_hint: ClassVar[str] = "; the estimator's own parameters go under 'params'"

    # Field order is the order of the Prefect UI's form (see `number_fields`): the estimator first.
    estimator: str = Field(
        default="sklearn.ensemble.HistGradientBoostingClassifier",
        description="Import path of the estimator class (kind 'sklearn').",
    )
    kind: Literal["sklearn", "torch"] = Field(
        default="sklearn", description="'sklearn': any scikit-learn estimator; 'torch': a tabular network."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator or network parameters.")
    seed: int = Field(default=0, description="Seed for the estimator's randomness.")
    label: OptionalText = Field(
        default=None,
        description="Compute route label (e.g. 'gpu') to train on; empty trains in the flow's own process.",
    )

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, value: int) -> int:
        # NumPy and scikit-learn take seeds in [0, 2**32); a bad one would only fail after ingest.
        if not 0 <= value < 2**32:
            raise ValueError(f"trainer.seed: expected a non-negative integer below 2**32, got {value}")
        return value

    def check(self, task: str | None = None) -> None:
        """Raise a `ConfigError` naming `trainer.estimator` or `trainer.params` if they cannot work.

        With `task` (the feature spec's), a scikit-learn estimator must be a classifier for
        classification and a regressor for regression, when it says which it is.

        Imports the estimator class and builds it (no data, no fit). With a `label`, the Compute
        Route block of that name must exist; a torch trainer routed to another machine has its
        parameters checked without importing PyTorch here.
        """
        from prefect_mlops.tasks.train import build_estimator

        if self.label:
            from prefect_mlops.tasks.route import load_route

            load_route(self.label)  # a missing route fails now, not after ingest, validation and feature-build
        if self.kind == "torch" and self.label:
            from prefect_mlops.tasks.torch_trainer import TabularNetEstimator

            accepted = TabularNetEstimator().get_params()
            unknown = sorted(set(self.params) - set(accepted))
            if unknown:
                raise ConfigError(f"trainer.params {unknown} are not parameters of the torch trainer; it "
                                  f"accepts {sorted(accepted)}")
            TabularNetEstimator(**{"seed": self.seed, **self.params}).config()
            return
        try:
            estimator = build_estimator(self)
        except ConfigError as exc:
            close = closest_estimator(self.estimator) if self.kind == "sklearn" else None
            if close:
                raise ConfigError(f"{exc}; did you mean {close!r}?") from exc
            raise
        if task is None or self.kind != "sklearn":
            return
        from sklearn.base import is_classifier, is_regressor

        kind = "classifier" if is_classifier(estimator) else "regressor" if is_regressor(estimator) else None
        wanted = "classifier" if task == "classification" else "regressor"
        if kind is not None and kind != wanted:
            raise ConfigError(f"trainer.estimator {self.estimator!r} is a {kind}, but the feature spec's task is "
                              f"{task!r}; choose a {wanted} (e.g. sklearn.ensemble.HistGradientBoosting"
                              f"{'Classifier' if wanted == 'classifier' else 'Regressor'}) or change features.task")


def closest_estimator(path: str) -> str | None:
    """The estimator import path nearest to a misspelled one, or None (importable, or nothing close).

    Looks among scikit-learn's estimators by public import path, and among the classes of the
    module the path names when that module imports (another library's estimators).

    Example:
        ```python
        from prefect_mlops.tasks.lineage import closest_estimator
        assert closest_estimator("sklearn.ensemble.RandomForrestClassifier") == \
            "sklearn.ensemble.RandomForestClassifier"
        assert closest_estimator("sklearn.linear_models.LogisticRegression") == \
            "sklearn.linear_model.LogisticRegression"
        ```
    """
    import difflib
    import importlib
    import inspect

    module_name, _, class_name = path.rpartition(".")
    candidates: list[str] = []
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError):
        module = None
    if module is not None:
        if hasattr(module, class_name):
            return None
        candidates += [f"{module_name}.{name}" for name, value in vars(module).items()
                       if inspect.isclass(value) and hasattr(value, "fit") and not name.startswith("_")]
    if path.startswith("sklearn.") or not candidates:
        from sklearn.utils import all_estimators

        for name, cls in all_estimators():
            candidates.append(f"{'.'.join(cls.__module__.split('.')[:2])}.{name}")  # sklearn.<package>.<Class>
    found = difflib.get_close_matches(path, candidates, n=1, cutoff=0.8)
    return found[0] if found else None


class TrainingRecord(BaseModel):
    """Which rows a model learned from and why: all of them, a time-stratified sample, or all through partial_fit.

    Example:
        ```python
        from prefect_mlops.tasks.lineage import TrainingRecord
        record = TrainingRecord(method="sample", rows=1000, available_rows=8000, sample="uniform",
                                reason="8000 rows need about 64 MB; the budget is 8 MB")
        assert record.summary() == "sample: 1,000 of 8,000 rows (uniform)"
        ```
    """

    model_config = ConfigDict(frozen=True)

    method: Literal["all", "sample", "incremental"] = Field(
        description="'all': every training row in one fit; 'sample': the rows that fit the budget; "
                    "'incremental': every training row through partial_fit in batches.")
    rows: int = Field(description="Rows the model learned from (rows seen once, for 'incremental').")
    available_rows: int = Field(description="Training rows in the window (hold-out excluded unless refit).")
    reason: str = Field(description="Why this method: the estimate against the budget, or the fallback.")
    sample: str | None = Field(default=None, description="How the sample was drawn (method 'sample').")
    estimated_bytes: int | None = Field(default=None, description="Estimated memory of a fit on every row.")
    budget_bytes: int | None = Field(default=None, description="The memory budget the estimate was held against.")
    batches: int | None = Field(default=None, description="partial_fit calls (method 'incremental').")
    transform_rows: int | None = Field(
        default=None, description="Rows the feature transform learned from (method 'incremental': a time-stratified "
                                  "sample; otherwise the fit's own rows).")
    expansion: float | None = Field(default=None, description="Peak memory per Arrow byte the estimate assumed.")
    budget: TrainingBudget = Field(default_factory=TrainingBudget,
                                   description="The policy's budget, so a refit plans the same way.")

    def summary(self) -> str:
        """One line: method, rows of rows, and how a sample was drawn."""
        text = f"{self.method}: {self.rows:,} of {self.available_rows:,} rows"
        return f"{text} ({self.sample})" if self.sample else text


class Lineage(BaseModel):
    """The data, code and parameters that made a model version."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    dataset: DatasetRef
    features: FeatureSpec
    trainer: TrainerSpec
    params_digest: str = Field(description="Hash of the feature spec and trainer: the training parameters.")
    suite_path: str | None = None
    code_version: str | None = None
    git_commit: str | None = None
    packages: dict[str, str] = Field(default_factory=dict)
    flow_run_id: str | None = None
    refit: bool = Field(default=False, description="Refit on the whole window, hold-out included, after the gate.")
    training: TrainingRecord | None = Field(
        default=None, description="Which rows the fit took and why (set by train; empty before training).")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    trigger: dict[str, Any] = Field(
        default_factory=dict,
        description="What started the training (see `describe_trigger`): kind, and the drift event's id and share.")

    def facts(self) -> dict[str, Any]:
        """The lineage's facts that fit a tag: everything but the package versions and the recipe's details."""
        return {"data": {"name": self.dataset.name, "uri": self.dataset.uri, "fingerprint": self.dataset.fingerprint,
                         "rows": self.dataset.rows, "window": self.dataset.window or "",
                         "source": self.dataset.source_uri or ""},
                "params_digest": self.params_digest,
                "trainer": self.trainer.estimator if self.trainer.kind == "sklearn" else "torch",
                "code_version": self.code_version or "", "git_commit": self.git_commit or "",
                "flow_run_id": self.flow_run_id or "", "suite_path": self.suite_path or "",
                "created_at": self.created_at,
                **({"training": {"method": self.training.method, "rows": self.training.rows,
                                 "available_rows": self.training.available_rows}} if self.training else {})}

    def tags(self) -> dict[str, str]:
        """The tags of a registered version: the facts as one JSON tag, the key facts, and the trigger.

        Example:
            ```python
            import json
            from prefect_mlops.refs import DatasetRef
            from prefect_mlops.tasks.features import FeatureSpec
            from prefect_mlops.tasks.lineage import Lineage, TrainerSpec
            data = DatasetRef(name="d", uri="/d.parquet", fingerprint="f" * 64, rows=10, columns={})
            lineage = Lineage(model_name="m", dataset=data, features=FeatureSpec(target="y", numeric=["x"]),
                              trainer=TrainerSpec(), params_digest="p", trigger={"kind": "manual"})
            tags = lineage.tags()
            assert json.loads(tags["prefect_mlops.lineage"])["data"]["rows"] == 10
            assert json.loads(tags["prefect_mlops.trigger"]) == {"kind": "manual"}
            ```
        """
        facts = self.facts()
        tags = {LINEAGE_TAG: json.dumps(facts, sort_keys=True),
                TRIGGER_TAG: json.dumps(self.trigger, sort_keys=True) if self.trigger else ""}
        for key in KEY_FACTS:
            value: Any = facts
            for part in key.split("."):
                value = value[part]
            tags[f"{TAG}.{key}"] = str(value)
        return tags

    def run_tags(self) -> dict[str, str]:
        """The MLflow run's tags: the version's, and the commit in MLflow's own tag."""
        return {**self.tags(), "mlflow.source.git.commit": (self.git_commit or "").removesuffix("-dirty")}


def version_facts(tags: dict[str, str]) -> dict[str, Any]:
    """A registered version's lineage facts, trigger and gate from its tags; reads the older one-tag-per-fact form.

    Example:
        ```python
        from prefect_mlops.tasks.lineage import version_facts
        old = {"prefect_mlops.data.fingerprint": "abc", "prefect_mlops.data.rows": "5", "prefect_mlops.gate": "passed"}
        facts = version_facts(old)
        assert facts["data"]["fingerprint"] == "abc" and facts["gate"] == "passed"
        assert facts["trigger"] == {"kind": "unknown"}
        ```
    """
    try:
        facts = json.loads(tags[LINEAGE_TAG])
    except (KeyError, ValueError):
        facts = {"data": {}}
        prefix = f"{TAG}."
        for key, value in tags.items():  # versions registered before the JSON tag: one tag per fact
            if not key.startswith(prefix) or key == GATE_TAG:
                continue
            name = key[len(prefix):]
            if name.startswith("data."):
                facts["data"][name[5:]] = int(value) if name == "data.rows" and value.isdigit() else value
            elif name.count(".") == 0:
                facts[name] = value
    try:
        facts["trigger"] = json.loads(tags[TRIGGER_TAG])
    except (KeyError, ValueError):
        facts["trigger"] = {"kind": "unknown"}
    facts["gate"] = tags.get(GATE_TAG)
    return facts


def describe_trigger(trigger: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """What started a training run, for the `prefect_mlops.trigger` tag.

    `trigger` is the flow's parameter; `details` what the retraining deployment's trigger passed on
    from the monitor's event (its id, name, drift share...). A deployment's own parameter says
    `schedule` on every run, so a run of it that Prefect's scheduler did not create (a person's custom
    run, or `prefect deployment run`) counts as `manual`. The monitor's `model.stale` event is `stale`.

    Example:
        ```python
        from prefect_mlops.tasks.lineage import describe_trigger
        found = describe_trigger("drift", {"event_id": "e1", "drift_share": 0.8, "unset": None})
        assert found == {"kind": "drift", "event_id": "e1", "drift_share": 0.8}
        assert describe_trigger("schedule", {"event": "prefect_mlops.model.stale"})["kind"] == "stale"
        ```
    """
    record: dict[str, Any] = {"kind": trigger}
    record.update({k: v for k, v in (details or {}).items() if v not in (None, "", [], {}) and k != "kind"})
    if str(record.get("event", "")).endswith(".model.stale"):
        record["kind"] = "stale"
    elif trigger == "schedule":
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        run = context.flow_run if context else None
        if run is not None and run.deployment_id is not None and not run.auto_scheduled:
            record["kind"] = "manual"
            record["note"] = "a run of the scheduled deployment that the scheduler did not create"
    if run_by := _created_by():
        record.setdefault("created_by", run_by)
    if record["kind"] not in TRIGGER_KINDS:
        raise ConfigError(f"trigger {trigger!r}: expected one of {', '.join(TRIGGER_KINDS)}")
    return record


def _created_by() -> str | None:
    """Who created the current flow run, when Prefect knows (an automation, a user); None otherwise."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    made = getattr(context.flow_run, "created_by", None) if context and context.flow_run else None
    if made is None:
        return None
    return f"{made.type or 'unknown'}: {made.display_value or made.id or ''}".strip()


class Champion(BaseModel):
    """The model version that the `champion` alias points to, with its lineage."""

    model: ModelRef
    lineage: Lineage | None


def recipe_digest(features: FeatureSpec, trainer: TrainerSpec) -> str:
    """Hash of the training parameters; equal digests on equal data mean nothing new to train.

    Example:
        ```python
        from prefect_mlops.tasks.features import FeatureSpec
        from prefect_mlops.tasks.lineage import TrainerSpec, recipe_digest
        spec = FeatureSpec(target="y", numeric=["x"])
        assert recipe_digest(spec, TrainerSpec()) == recipe_digest(spec, TrainerSpec())
        ```
    """
    recipe = {"features": features.model_dump(mode="json"),
              "trainer": trainer.model_dump(mode="json", exclude={"label"})}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def find_model(
    model_name: str, alias: str = "champion", *, mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
) -> Champion | None:
    """The version an alias points to and its lineage, or None when the alias is not set.

    Example:
        ```python
        import tempfile
        from prefect_mlops.blocks import MlflowServer
        from prefect_mlops.tasks.lineage import find_model
        from prefect_mlops.workspace import Workspace
        assert find_model("no-such-model", workspace=Workspace(tempfile.mkdtemp())) is None
        ```
    """
    from mlflow.exceptions import MlflowException

    server = mlflow_server or MlflowServer()
    server.check_reachable(workspace)
    client = server.client(workspace)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"model {model_name!r}: reading alias {alias!r} failed: {exc}") from exc
    model = ModelRef(name=model_name, version=str(version.version), run_id=version.run_id or "",
                     source=version.source)
    return Champion(model=model, lineage=read_lineage(model.run_id, server, workspace))


def read_lineage(run_id: str, server: MlflowServer, workspace: Workspace | None = None) -> Lineage | None:
    """The lineage record logged with a run, or None for a model made elsewhere."""
    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = server.client(workspace).download_artifacts(run_id, "lineage.json", folder)
        except Exception:
            return None  # a version registered by hand has no lineage: treat it as unknown
        with open(path) as handle:
            return Lineage.model_validate(json.load(handle))


def read_importance(champion: Champion, *, mlflow_server: MlflowServer | None = None,
                    workspace: Workspace | str | None = None) -> dict[str, float]:
    """The permutation importance evaluate recorded for the champion's run; empty when none was recorded.

    Drift-check weighs each column by it; an empty answer weighs columns equally.
    """
    from mlflow.exceptions import MlflowException

    server = mlflow_server or MlflowServer()
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    client = server.client(workspace)
    run_id = champion.model.run_id
    if not run_id:
        return {}
    try:
        names = {f.path for f in client.list_artifacts(run_id)}
    except MlflowException as exc:
        raise RegistryError(f"model {champion.model.name!r} v{champion.model.version}: listing the artifacts of "
                            f"run {run_id} at {server.uri(workspace)} failed: {exc}") from exc
    if "importance.json" not in names:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "importance.json", folder)
        with open(path) as handle:
            return {str(k): float(v) for k, v in json.load(handle).items()}


@task(name="find-champion", task_run_name="find-{alias}-{model_name}")
def find_champion(
    model_name: str, alias: str = "champion", mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
) -> Champion | None:
    """Look up the model an alias points to (see `find_model`)."""
    found = find_model(model_name, alias, mlflow_server=mlflow_server, workspace=Workspace(workspace))
    run_logger().info("%s@%s: %s", model_name, alias, f"version {found.model.version}" if found else "none")
    return found
