"""Evaluate: score the challenger and the current champion on the same hold-out.

Classification reports accuracy, F1, ROC AUC and log loss; regression RMSE, MAE and R²;
each overall and per slice, with a bootstrap confidence interval for challenger minus
champion on the primary metric.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.mlflow_server import MlflowServer
from prefect_mlops.blocks.model_policy import LOWER_IS_BETTER, ModelPolicy
from prefect_mlops.log import run_logger
from prefect_mlops.refs import artifact_key
from prefect_mlops.tasks.features import FeatureSet, load_holdout
from prefect_mlops.tasks.lineage import Champion
from prefect_mlops.tasks.train import TrainedModel
from prefect_mlops.workspace import Workspace, write_atomic

if TYPE_CHECKING:
    import pandas as pd

IMPORTANCE_ARTIFACT = "importance.json"
PLOT_ARTIFACT = "evaluation/challenger-vs-champion.png"
"""Run artifact: ROC, precision-recall, calibration and confusion matrices (or residuals), both models."""
BOOTSTRAP_MAX_ROWS = 5000  # the interval's width barely changes past this; the cost grows linearly


class Scores(BaseModel):
    """One model's metrics on the hold-out, overall and per slice."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    role: str = Field(description="'challenger' or 'champion'.")
    version: str | None = Field(default=None, description="Registry version (champion only).")
    run_id: str
    overall: dict[str, float]
    slices: dict[str, dict[str, float]] = Field(default_factory=dict)
    slice_rows: dict[str, int] = Field(default_factory=dict)


class Evaluation(BaseModel):
    """Challenger against champion on one hold-out."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    model_name: str
    task: str
    primary_metric: str
    holdout_rows: int
    challenger: Scores
    champion: Scores | None = None
    difference: float | None = Field(default=None, description="Challenger minus champion, primary metric.")
    interval: tuple[float, float] | None = Field(default=None, description="95% bootstrap interval of it.")
    champion_degraded: str | None = Field(
        default=None, description="Why the champion counts as degraded on the latest labelled data; None if not.")
    smoke_sample_uri: str = Field(description="Parquet of hold-out rows with the challenger's predictions.")
    importance: dict[str, float] = Field(
        default_factory=dict,
        description="Permutation importance of each feature column for the challenger on the hold-out "
                    "(drop of the primary metric when the column is shuffled); drift-check weighs columns by it.")


CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def classification_metrics(y: np.ndarray, labels: np.ndarray, proba: np.ndarray | None,
                           classes: np.ndarray, only: tuple[str, ...] = CLASSIFICATION_METRICS) -> dict[str, float]:
    """Accuracy, F1, ROC AUC and log loss (or the `only` ones); a metric that cannot be computed is NaN."""
    from sklearn import metrics

    binary = len(classes) == 2
    result = {}
    if "accuracy" in only:
        result["accuracy"] = float(metrics.accuracy_score(y, labels))
    if "f1" in only:
        result["f1"] = float(metrics.f1_score(y, labels, average="binary" if binary else "macro",
                                              pos_label=classes[-1] if binary else 1, zero_division=0))
    if "roc_auc" in only:
        result["roc_auc"] = math.nan
        if proba is not None and len(np.unique(y)) > 1:
            try:
                result["roc_auc"] = float(metrics.roc_auc_score(y, proba[:, 1]) if binary else
                                          metrics.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
            except ValueError:
                pass
    if "log_loss" in only:
        result["log_loss"] = math.nan
        if proba is not None:
            try:
                result["log_loss"] = float(metrics.log_loss(y, proba, labels=classes))
            except ValueError:
                pass
    return result


def regression_metrics(y: np.ndarray, predicted: np.ndarray,
                       only: tuple[str, ...] = REGRESSION_METRICS) -> dict[str, float]:
    """RMSE, MAE and R² (or the `only` ones)."""
    from sklearn import metrics

    found = {"rmse": lambda: float(np.sqrt(metrics.mean_squared_error(y, predicted))),
             "mae": lambda: float(metrics.mean_absolute_error(y, predicted)),
             "r2": lambda: float(metrics.r2_score(y, predicted)) if len(y) > 1 else math.nan}
    return {name: compute() for name, compute in found.items() if name in only}


# scikit-learn classifiers whose `predict` is `classes_[argmax(predict_proba)]`: their labels come from the
# probabilities already computed instead of a second pass over the trees.
_ARGMAX_PREDICT = {"HistGradientBoostingClassifier", "RandomForestClassifier", "ExtraTreesClassifier",
                   "DecisionTreeClassifier", "ExtraTreeClassifier"}


class _Outputs:
    """One model's predictions on the hold-out, enough to compute any metric on any subset."""

    def __init__(self, model: Any, x: pd.DataFrame | None, task: str, *, transformed: Any = None) -> None:
        from sklearn.pipeline import Pipeline

        self.proba = None
        self.classes = None
        if x is None and transformed is None:  # filled in by `subset`
            return
        wants_proba = task == "classification" and hasattr(model, "predict_proba")
        if transformed is not None:  # `model[:-1].transform(x)`, computed by the caller
            final, xt = model.steps[-1][1], transformed
        elif isinstance(model, Pipeline) and len(model.steps) > 1 and wants_proba:
            # What Pipeline.predict and .predict_proba each do, with the feature transform run once, not twice.
            final, xt = model.steps[-1][1], model[:-1].transform(x)
        else:
            final, xt = model, x
        if wants_proba:
            self.proba = np.asarray(final.predict_proba(xt))
            self.classes = np.asarray(model.classes_)
        kind = type(final)
        if wants_proba and kind.__name__ in _ARGMAX_PREDICT and kind.__module__.startswith("sklearn.") \
                and self.proba.ndim == 2:
            self.labels = np.asarray(final.classes_).take(np.argmax(self.proba, axis=1), axis=0)
        else:
            self.labels = np.asarray(final.predict(xt))

    @staticmethod
    def stack(parts: list[_Outputs]) -> _Outputs:
        """The outputs of several row blocks, one after the other."""
        whole = _Outputs(None, None, "")
        whole.labels, whole.classes = np.concatenate([p.labels for p in parts]), parts[0].classes
        whole.proba = None if parts[0].proba is None else np.concatenate([p.proba for p in parts])
        return whole

    def subset(self, rows: np.ndarray | slice) -> _Outputs:
        """These outputs on some rows only."""
        part = _Outputs(None, None, "")
        part.labels, part.classes = self.labels[rows], self.classes
        part.proba = None if self.proba is None else self.proba[rows]
        return part

    def metrics(self, y: np.ndarray, task: str, rows: np.ndarray | slice = slice(None),
                only: tuple[str, ...] | None = None) -> dict[str, float]:
        if task == "regression":
            return regression_metrics(y[rows], self.labels[rows], only or REGRESSION_METRICS)
        classes = self.classes if self.classes is not None else np.unique(y)
        return classification_metrics(y[rows], self.labels[rows],
                                      None if self.proba is None else self.proba[rows], classes,
                                      only or CLASSIFICATION_METRICS)


def score(outputs: _Outputs, holdout: pd.DataFrame, features: FeatureSet, *, role: str, run_id: str,
          version: str | None = None) -> Scores:
    """Overall and per-slice metrics of one model's outputs."""
    spec = features.spec
    y = holdout[spec.target].to_numpy()
    slices, counts = {}, {}
    if spec.slice_column:
        groups = holdout.groupby(spec.slice_column, observed=True, sort=True).indices
        for value, rows in groups.items():
            slices[str(value)] = outputs.metrics(y, spec.task, rows)
            counts[str(value)] = len(rows)
    return Scores(role=role, version=version, run_id=run_id, overall=outputs.metrics(y, spec.task),
                  slices=slices, slice_rows=counts)


def bootstrap_interval(y: np.ndarray, challenger: _Outputs, champion: _Outputs, *, task: str, metric: str,
                       samples: int = 200, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of challenger minus champion on `metric`, by resampling rows."""
    rng = np.random.default_rng(seed)
    rows = len(y)
    base = rng.choice(rows, size=min(rows, BOOTSTRAP_MAX_ROWS), replace=False) if rows > BOOTSTRAP_MAX_ROWS \
        else np.arange(rows)
    diffs = []
    for _ in range(samples):
        pick = base[rng.integers(0, len(base), len(base))]
        # Only the metric compared: the others would be computed 2 x `samples` times for nothing.
        diff = challenger.metrics(y, task, pick, (metric,))[metric] - champion.metrics(y, task, pick, (metric,))[metric]
        if math.isfinite(diff):
            diffs.append(diff)
    if not diffs:
        return (math.nan, math.nan)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return (float(low), float(high))


_SCORERS = {"accuracy": "accuracy", "f1": "f1_macro", "roc_auc": "roc_auc_ovr", "log_loss": "neg_log_loss",
            "rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error", "r2": "r2"}


def feature_importance(model: Any, x: pd.DataFrame, y: np.ndarray, *, metric: str, seed: int = 0,
                       max_rows: int = 2000, repeats: int = 3, outputs: _Outputs | None = None,
                       task: str | None = None) -> dict[str, float]:
    """Permutation importance of each raw feature column on (a sample of) the hold-out.

    Measured on raw columns, the ones drift-check compares, not on the transform's outputs.
    Negative values (noise) are kept; drift-check treats them as 0. Empty when the metric
    cannot be computed on these rows (one class in the hold-out, say).

    The numbers are scikit-learn's `permutation_importance` (same scorer, same shuffles), computed
    with fewer passes: a ColumnTransformer's parts re-transform only the columns shuffled
    (`_shuffled_transform`), the model predicts each column's shuffled copies at once (or, for other
    transforms, every copy stacked in one frame), and the unshuffled score comes from `outputs` (the
    model's predictions on `x`) when given.

    Example:
        ```python
        import numpy as np, pandas as pd
        from sklearn.linear_model import LinearRegression
        from prefect_mlops.tasks.evaluate import feature_importance
        x = pd.DataFrame({"a": np.arange(50.0), "b": np.ones(50)})
        model = LinearRegression().fit(x, 2 * x["a"])
        found = feature_importance(model, x, (2 * x["a"]).to_numpy(), metric="rmse")
        assert found["a"] > 0 and found["b"] == 0
        ```
    """
    import pandas as pd
    from sklearn.metrics import get_scorer

    task = task or ("regression" if metric in REGRESSION_METRICS else "classification")
    if len(x) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size=max_rows, replace=False))
        x, y = x.iloc[rows], y[rows]
        outputs = outputs.subset(rows) if outputs is not None else None
    # permutation_importance's shuffles: one seed drawn from `seed`, the same for every column, and each
    # repeat shuffles the column as the previous repeat left it.
    state = np.random.RandomState(np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1))
    size, shuffle, order = len(x), np.arange(len(x)), np.arange(len(x))
    orders = []
    for _ in range(repeats):
        state.shuffle(shuffle)
        order = order[shuffle]
        orders.append(order)
    base = x.reset_index(drop=True)
    columns = list(base.columns)
    blocks = len(columns) * repeats
    scorer = get_scorer(_SCORERS[metric])
    try:
        transformed = _shuffled_transform(model, base, orders)
        if transformed is not None:  # one column's shuffled copies at a time
            every = _Outputs.stack([_Outputs(model, None, task, transformed=xt) for xt in transformed])
        else:
            stacked = {}
            for j, column in enumerate(columns):
                take = np.tile(np.arange(size), blocks)
                for r, shuffled in enumerate(orders):
                    block = j * repeats + r
                    take[block * size:(block + 1) * size] = shuffled
                stacked[column] = base[column].take(take).reset_index(drop=True)
            every = _Outputs(model, pd.DataFrame(stacked, columns=columns), task)
        plain = outputs if outputs is not None else _Outputs(model, x, task)
        baseline = scorer(_replay(plain, task), None, y)
        shuffled = _binary_auc(every, y, blocks) if metric == "roc_auc" else None
        if shuffled is None:
            shuffled = np.array([scorer(_replay(every.subset(slice(b * size, (b + 1) * size)), task), None, y)
                                 for b in range(blocks)])
        shuffled = shuffled.reshape(len(columns), repeats)
    except (ValueError, IndexError):  # e.g. one class in the sample: importance is unknown, not an error
        return {}
    return {str(c): float(v) for c, v in zip(columns, baseline - shuffled.mean(axis=1), strict=True)}


def _shuffled_transform(model: Any, base: pd.DataFrame, orders: list[np.ndarray]) -> Iterator[np.ndarray] | None:
    """`model[:-1].transform` of the shuffled copies of `base`, one column at a time (that column shuffled
    by each of `orders` in turn, stacked), or None where it cannot be built part by part.

    A pipeline whose transform starts with a fitted ColumnTransformer transforms `base` once; a shuffled
    column then changes only the output columns of the parts that read it (`output_indices_`), so only
    those parts transform the shuffled rows. Each part sees exactly the rows and columns it sees inside
    the ColumnTransformer, so the result is the whole transform's, value for value. Any other layout
    (a subclass, weights, sparse or pandas output, a part's columns given by position or as one name, no
    output at all) returns None, and the caller transforms the stacked frame whole. One column's block
    is built at a time, in one buffer: the memory is that of `len(orders)` copies of the sample.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or len(model.steps) < 2 or len(base) == 0:
        return None
    head = model.steps[0][1]
    # Exactly ColumnTransformer: a subclass may stack or transform its parts its own way.
    if type(head) is not ColumnTransformer or not hasattr(head, "output_indices_") \
            or getattr(head, "sparse_output_", True) or head.transformer_weights:
        return None
    parts = []
    for name, part, selected in head.transformers_:
        if isinstance(part, str) and part == "drop":
            continue
        cut = head.output_indices_.get(name)
        if cut is None or isinstance(part, str) or not isinstance(selected, list) \
                or not all(isinstance(c, str) and c in base.columns for c in selected):
            return None  # fitted parts are estimators (passthrough is a FunctionTransformer), by name
        if cut.stop > cut.start:
            parts.append((part, selected, cut))
    unshuffled = head.transform(base)
    if not isinstance(unshuffled, np.ndarray) or unshuffled.ndim != 2 or unshuffled.shape[1] == 0:
        return None
    return _shuffled_blocks(model, base, orders, unshuffled, parts)


def _shuffled_blocks(model: Any, base: pd.DataFrame, orders: list[np.ndarray], unshuffled: np.ndarray,
                     parts: list[tuple[Any, list[str], slice]]) -> Iterator[np.ndarray]:
    import pandas as pd
    from scipy import sparse

    repeats, size = len(orders), len(base)
    buffer = np.empty((repeats * size, unshuffled.shape[1]), dtype=unshuffled.dtype)
    # Each part's input rows, repeated once per shuffle: built once, a shuffled column swapped in per copy.
    inputs = [pd.concat([base[selected]] * repeats, ignore_index=True) for _, selected, _ in parts]
    for column in base.columns:
        buffer.reshape(repeats, size, -1)[:] = unshuffled
        shuffled = pd.concat([base[column].take(order) for order in orders], ignore_index=True)
        for (part, selected, cut), repeated in zip(parts, inputs, strict=True):
            if column not in selected:
                continue
            frame = repeated.copy(deep=False)
            frame[column] = shuffled  # replaces the column in this copy only: `repeated` keeps the original
            result = part.transform(frame)
            buffer[:, cut] = result.toarray() if sparse.issparse(result) else np.asarray(result)
        yield model[1:-1].transform(buffer) if len(model.steps) > 2 else buffer


def _binary_auc(outputs: _Outputs, y: np.ndarray, blocks: int) -> np.ndarray | None:
    """ROC AUC of each of `blocks` equal row blocks of `outputs` against `y`, all at once; None unless binary.

    The rank-sum (Mann-Whitney) form of the area scikit-learn integrates under the ROC curve, ties
    counted half as its curve counts them: equal to `roc_auc_score` to rounding (about 1e-16), in one
    sort instead of one scorer call per block.
    """
    from scipy.stats import rankdata

    classes = outputs.classes
    if outputs.proba is None or classes is None or len(classes) != 2 or outputs.proba.ndim != 2 \
            or not np.array_equal(np.unique(y), classes):
        return None  # multiclass, one class, or labels the model never saw: the scorer decides
    positive = y == classes[1]
    n1 = int(positive.sum())
    n0 = len(y) - n1
    scores = outputs.proba[:, 1].reshape(blocks, len(y))
    if not np.isfinite(scores).all():
        return None  # the scorer refuses NaN probabilities (importance unknown), so does this
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positive].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _replay(outputs: _Outputs, task: str) -> Any:
    """A fitted-looking estimator that answers with `outputs`: a scikit-learn scorer scores it as the model."""
    global _REPLAY
    if _REPLAY is None:
        from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

        class Replay(BaseEstimator):
            def __init__(self, outputs: Any = None) -> None:
                self.outputs = outputs

            def fit(self, x: Any, y: Any) -> Any:
                return self

            def predict(self, x: Any) -> np.ndarray:
                return self.outputs.labels

        class Classifier(ClassifierMixin, Replay):
            def predict_proba(self, x: Any) -> np.ndarray:
                return self.outputs.proba

        class Regressor(RegressorMixin, Replay):
            pass

        _REPLAY = {"classification": Classifier, "regression": Regressor}
    replay = _REPLAY[task](outputs)
    if task == "classification":
        replay.classes_ = outputs.classes
    return replay


_REPLAY: dict[str, type] | None = None


def evaluate_models(
    trained: TrainedModel,
    features: FeatureSet,
    *,
    champion: Champion | None = None,
    policy: ModelPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: Workspace | None = None,
    bootstrap_samples: int = 200,
    champion_degraded: str | None = None,
    plot_to: Path | None = None,
    painter: Any = None,
) -> Evaluation:
    """Score challenger and champion on the feature set's hold-out; the plain function behind `evaluate`.

    With `plot_to`, also draws both models' curves on (a sample of) the hold-out into that PNG. With a
    `painter` (a `Painter` the caller started and closes), the figure is handed to it and is in place
    once `collect_figure(painter, ...)` returns: the caller does other work meanwhile.
    """
    from prefect_mlops.tasks._plots import Painter

    def run(drawing: Any) -> Evaluation:
        return _evaluate_models(trained, features, champion=champion, policy=policy, mlflow_server=mlflow_server,
                                workspace=workspace, bootstrap_samples=bootstrap_samples,
                                champion_degraded=champion_degraded, plot_to=plot_to, painter=drawing)

    if plot_to is None or painter is not None:
        return run(painter if plot_to is not None else None)
    # The figure's process starts first: it imports matplotlib while the models are scored, and draws
    # while the importance is computed.
    with Painter() as own:
        evaluation = run(own)
        collect_figure(own, trained.run_id)
        return evaluation


def collect_figure(painter: Any, run_id: str) -> bool:
    """Wait for the figure `painter` draws; False (with a warning) when it could not be drawn."""
    failed = painter.result()
    if failed:  # the figure illustrates; it never decides, so it never fails the evaluation
        run_logger().warning("could not draw the evaluation figure of run %s (%s); the metrics stand", run_id,
                             failed)
    return not failed


def _evaluate_models(trained: TrainedModel, features: FeatureSet, *, champion: Champion | None,
                     policy: ModelPolicy | None, mlflow_server: MlflowServer | None, workspace: Workspace | None,
                     bootstrap_samples: int, champion_degraded: str | None, plot_to: Path | None,
                     painter: Any) -> Evaluation:
    server = mlflow_server or MlflowServer()
    workspace = workspace or Workspace()
    policy = policy or ModelPolicy()
    spec = features.spec
    metric = policy.primary(spec.task)
    columns = list(dict.fromkeys([*spec.feature_columns, spec.target, *([spec.slice_column] if spec.slice_column
                                                                        else [])]))
    holdout = load_holdout(features, columns)  # only the rows and columns scored, never the train part
    x, y = holdout[spec.feature_columns], holdout[spec.target].to_numpy()

    challenger_model = server.load_model(trained.model_source, workspace, sha256=trained.sha256,
                                         what=f"challenger of run {trained.run_id}")
    challenger_out = _Outputs(challenger_model, x, spec.task)
    challenger = score(challenger_out, holdout, features, role="challenger", run_id=trained.run_id)
    champion_scores = difference = interval = None
    if champion is not None:
        champion_model = server.load_model(champion.model.source, workspace,
                                           what=f"champion {champion.model.name!r} v{champion.model.version} "
                                                "(@champion)")
        champion_out = _Outputs(champion_model, x, spec.task)
        champion_scores = score(champion_out, holdout, features, role="champion", run_id=champion.model.run_id,
                                version=champion.model.version)
        difference = challenger.overall[metric] - champion_scores.overall[metric]
        if bootstrap_samples:
            interval = bootstrap_interval(y, challenger_out, champion_out, task=spec.task, metric=metric,
                                          samples=bootstrap_samples, seed=spec.seed)

    if painter is not None:
        outputs = [challenger_out] + ([champion_out] if champion is not None else [])
        names = ["challenger"] + ([f"champion v{champion.model.version}"] if champion is not None else [])
        try:
            draw_outputs(plot_to, y, outputs, names, task=spec.task, seed=spec.seed, painter=painter,
                         title=f"{trained.lineage.model_name}: challenger (run {trained.run_id[:8]}) against "
                               f"{names[-1] if champion is not None else 'no champion yet'}, {len(y)} hold-out rows")
        except Exception as exc:  # reported below as the painter's error
            painter.error = f"{type(exc).__name__}: {exc}"
    importance = feature_importance(challenger_model, x, y, metric=metric, seed=spec.seed, outputs=challenger_out,
                                    task=spec.task)
    sample = x.head(20).copy()
    sample["__prediction__"] = challenger_out.labels[:20]
    path = write_atomic(workspace.folder("samples") / f"{trained.run_id}.parquet",
                        lambda tmp: sample.to_parquet(tmp, index=False), stage="evaluation smoke sample")
    return Evaluation(model_name=trained.lineage.model_name, task=spec.task, primary_metric=metric,
                      holdout_rows=len(holdout), challenger=challenger, champion=champion_scores,
                      difference=difference, interval=interval, smoke_sample_uri=str(path),
                      champion_degraded=champion_degraded, importance=importance)


def draw_outputs(path: Path, y: np.ndarray, outputs: list[_Outputs], names: list[str], *, task: str,
                 seed: int, title: str, painter: Any = None) -> Path:
    """The evaluation figure of these models' outputs, on a seeded sample of at most `PLOT_MAX_ROWS` rows.

    With a `Painter`, the figure is handed to its process and drawn there (collect it with `painter.result()`).
    """
    from prefect_mlops.tasks._plots import PLOT_MAX_ROWS, Drawn, draw, sample_rows

    rows = sample_rows(len(y), seed=seed)
    drawn = [Drawn(name, out.labels[rows], None if out.proba is None else out.proba[rows], out.classes)
             for name, out in zip(names, outputs, strict=True)]
    shown = f"{title}" + (f" (a sample of {PLOT_MAX_ROWS})" if len(y) > PLOT_MAX_ROWS else "")
    if painter is not None:
        painter.draw(path, y[rows], drawn, task=task, title=shown)
        return path
    return draw(path, y[rows], drawn, task=task, title=shown)


def comparison_metrics(evaluation: Evaluation) -> dict[str, float]:
    """The champion's hold-out metrics and challenger minus champion, as MLflow metrics of the challenger's run.

    `champion_<metric>`, `delta_<metric>` (challenger minus champion, whatever the direction), and
    the bootstrap interval of the primary metric's delta; empty without a champion.

    Example:
        ```python
        from prefect_mlops.tasks.evaluate import Evaluation, Scores, comparison_metrics
        new = Scores(role="challenger", run_id="a", overall={"rmse": 1.0})
        old = Scores(role="champion", run_id="b", version="1", overall={"rmse": 1.5})
        found = comparison_metrics(Evaluation(model_name="m", task="regression", primary_metric="rmse",
                                              holdout_rows=9, challenger=new, champion=old, smoke_sample_uri=""))
        assert found == {"champion_rmse": 1.5, "delta_rmse": -0.5}
        ```
    """
    champion = evaluation.champion
    if champion is None:
        return {}
    found: dict[str, float] = {}
    for name, value in evaluation.challenger.overall.items():
        other = champion.overall.get(name, math.nan)
        if math.isfinite(other):
            found[f"champion_{name}"] = other
            if math.isfinite(value):
                found[f"delta_{name}"] = value - other
    if evaluation.interval and all(math.isfinite(v) for v in evaluation.interval):
        found[f"delta_{evaluation.primary_metric}_ci_low"], found[f"delta_{evaluation.primary_metric}_ci_high"] = \
            evaluation.interval
    return found


def render_evaluation(evaluation: Evaluation) -> str:
    """Markdown: metrics of challenger and champion side by side, then per slice."""
    champion = evaluation.champion
    head = f"champion v{champion.version}" if champion else "champion (none yet)"
    lines = [f"# {evaluation.model_name}: challenger vs {head}", "",
             f"Hold-out: {evaluation.holdout_rows} rows. Primary metric: **{evaluation.primary_metric}**"
             f"{' (lower is better)' if evaluation.primary_metric in LOWER_IS_BETTER else ''}.", "",
             f"| metric | challenger | {head} | difference |", "|---|---|---|---|"]
    for name, value in evaluation.challenger.overall.items():
        other = champion.overall.get(name) if champion else None
        diff = f"{value - other:+.4f}" if other is not None else ""
        lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} | {diff} |")
    if evaluation.interval:
        low, high = evaluation.interval
        lines += ["", f"95% bootstrap interval of challenger - champion ({evaluation.primary_metric}): "
                      f"[{low:+.4f}, {high:+.4f}]"]
    if evaluation.challenger.slices:
        lines += ["", f"| slice | rows | challenger {evaluation.primary_metric} | champion |", "|---|---|---|---|"]
        for value, metrics in evaluation.challenger.slices.items():
            other = champion.slices.get(value, {}).get(evaluation.primary_metric) if champion else None
            lines.append(f"| {value} | {evaluation.challenger.slice_rows[value]} | "
                         f"{metrics[evaluation.primary_metric]:.4f} | {'' if other is None else f'{other:.4f}'} |")
    return "\n".join(lines)


def record_evaluation(trained: TrainedModel, evaluation: Evaluation, *, mlflow_server: MlflowServer,
                      workspace: Workspace) -> None:
    """Log the hold-out metrics, the hold-out size and the permutation importance to the challenger's run.

    They are its reference performance and drift weights once it is champion (the monitor reads them).
    """
    from mlflow.entities import Metric

    client = mlflow_server.client(workspace)
    now = int(time.time() * 1000)
    found = {f"holdout_{name}": value for name, value in evaluation.challenger.overall.items() if math.isfinite(value)}
    client.log_batch(trained.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in
                                              {**found, "holdout_rows": evaluation.holdout_rows}.items()])
    if evaluation.importance:
        client.log_dict(trained.run_id, evaluation.importance, IMPORTANCE_ARTIFACT)


@task(name="evaluate", task_run_name="evaluate-{trained.run_id}")
def evaluate(
    trained: TrainedModel,
    features: FeatureSet,
    champion: Champion | None = None,
    policy: ModelPolicy | None = None,
    mlflow_server: MlflowServer | None = None,
    workspace: str | None = None,
    champion_degraded: str | None = None,
) -> Evaluation:
    """Score challenger and champion (see `evaluate_models`); log metrics and publish the comparison.

    The hold-out metrics, the hold-out size and the permutation importance go to the challenger's
    MLflow run: they are its reference performance and drift weights once it is champion. So do the
    champion's metrics and the differences (`champion_<metric>`, `delta_<metric>`) and the figure
    of both models on the hold-out (`evaluation/challenger-vs-champion.png`).
    """
    from prefect_mlops.tasks._plots import Painter

    server = mlflow_server or MlflowServer()
    ws = Workspace(workspace)
    plot = ws.folder("plots", trained.run_id) / PLOT_ARTIFACT.rsplit("/", 1)[-1]
    # The figure is drawn in its own process from the start of the stage to its upload, the last step.
    with Painter() as painter:
        evaluation = evaluate_models(trained, features, champion=champion, policy=policy, mlflow_server=server,
                                     workspace=ws, champion_degraded=champion_degraded, plot_to=plot,
                                     painter=painter)
        record_evaluation(trained, evaluation, mlflow_server=server, workspace=ws)
        create_markdown_artifact(render_evaluation(evaluation), key=artifact_key("metrics", evaluation.model_name),
                                 description="Challenger against champion on the hold-out")
        run_logger().info("challenger %s=%.4f, champion %s", evaluation.primary_metric,
                          evaluation.challenger.overall[evaluation.primary_metric],
                          f"{evaluation.champion.overall[evaluation.primary_metric]:.4f}"
                          if evaluation.champion else "none")
        log_comparison(trained, evaluation, plot, mlflow_server=server, workspace=ws, painter=painter)
    return evaluation


def log_comparison(trained: TrainedModel, evaluation: Evaluation, plot: Path | None, *,
                   mlflow_server: MlflowServer, workspace: Workspace, painter: Any = None) -> None:
    """The comparison with the champion as metrics, and the evaluation figure, on the challenger's run.
    With the `painter` drawing the figure, it is waited for after the metrics are logged."""
    from mlflow.entities import Metric

    client = mlflow_server.client(workspace)
    now = int(time.time() * 1000)
    found = comparison_metrics(evaluation)
    if found:
        client.log_batch(trained.run_id, metrics=[Metric(k, v, now, 0) for k, v in found.items()])
    if painter is not None and plot is not None:
        collect_figure(painter, trained.run_id)
    if plot is not None and plot.exists():
        client.log_artifact(trained.run_id, str(plot), PLOT_ARTIFACT.rsplit("/", 1)[0])
