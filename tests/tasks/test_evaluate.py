"""evaluate: metrics for both tasks, per slice, champion on the same hold-out, a bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefect_mlops.blocks import DataSource, ModelPolicy
from prefect_mlops.tasks.evaluate import classification_metrics, regression_metrics
from prefect_mlops.tasks.features import FeatureSpec
from prefect_mlops.tasks.lineage import TrainerSpec
from tests.tasks.stages import promote_cycle, train_and_judge


def test_metric_functions_match_hand_computed_values():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    got = classification_metrics(y, proba.argmax(axis=1), proba, np.array([0, 1]))
    assert got["accuracy"] == 0.5 and got["roc_auc"] == 0.75
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.3])))
    one_class = classification_metrics(np.array([1, 1]), np.array([1, 0]), proba[:2], np.array([0, 1]))
    assert math.isnan(one_class["roc_auc"])
    reg = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert reg["mae"] == pytest.approx(2 / 3) and reg["rmse"] == pytest.approx(np.sqrt(4 / 3))


def test_challenger_and_champion_scored_on_the_same_holdout_with_slices_and_interval(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, window0):
    first = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    assert first.evaluation.champion is None and first.evaluation.interval is None
    promote_cycle(first, server=mlflow_server, workspace=workspace)
    weak = TrainerSpec(estimator="sklearn.dummy.DummyClassifier", params={"strategy": "prior"})
    second = train_and_judge(churn_source, churn_features, weak, server=mlflow_server, workspace=workspace,
                             window=window0)
    evaluation = second.evaluation
    assert evaluation.champion.version == "1"
    assert evaluation.champion.overall == first.evaluation.challenger.overall  # same hold-out, same model
    assert evaluation.challenger.overall["roc_auc"] == 0.5
    assert set(evaluation.challenger.slices) == {"north", "south", "east", "west"}
    assert sum(evaluation.challenger.slice_rows.values()) == evaluation.holdout_rows
    low, high = evaluation.interval
    assert low <= evaluation.difference <= high < 0


def test_regression_models_are_scored_with_error_metrics(tmp_path, mlflow_server, workspace):
    rng = np.random.default_rng(0)
    import pandas as pd

    x = rng.normal(size=(400, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "g": rng.choice(["u", "v"], 400),
                          "y": 3 * x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=400)})
    frame.to_parquet(tmp_path / "reg.parquet", index=False)
    spec = FeatureSpec(target="y", numeric=["a", "b"], categorical=["g"], task="regression", slice_column="g")
    cycle = train_and_judge(DataSource(uri=str(tmp_path / "reg.parquet")), spec,
                            TrainerSpec(estimator="sklearn.linear_model.Ridge"), server=mlflow_server,
                            workspace=workspace, name="prices", policy=ModelPolicy(floors={"rmse": 0.5}))
    overall = cycle.evaluation.challenger.overall
    assert set(overall) == {"rmse", "mae", "r2"} and overall["r2"] > 0.95
    assert cycle.evaluation.primary_metric == "rmse" and cycle.verdict.passed


@pytest.fixture(scope="module")
def shop():
    import pandas as pd

    rng = np.random.default_rng(7)
    n = 3000
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y", "z"], n)})
    return x, ((x.a + (x.c == "x")) > 0.5).astype(int).to_numpy(), (2 * x.a + rng.normal(size=n)).to_numpy()


@pytest.mark.parametrize(("estimator", "metric"), [
    ("HistGradientBoostingClassifier", "roc_auc"), ("RandomForestClassifier", "accuracy"),
    ("LogisticRegression", "log_loss"), ("LogisticRegression", "f1"), ("HistGradientBoostingRegressor", "rmse"),
    ("HistGradientBoostingRegressor", "r2")])
def test_one_pass_importance_is_scikit_learns_permutation_importance(shop, estimator, metric):
    from sklearn import ensemble, linear_model
    from sklearn.inspection import permutation_importance
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks.evaluate import _SCORERS, _Outputs, feature_importance
    from prefect_mlops.tasks.features import make_transform

    x, label, value = shop
    task = "regression" if metric in ("rmse", "r2") else "classification"
    y = value if task == "regression" else label
    kind = getattr(ensemble, estimator, None) or getattr(linear_model, estimator)
    params = {"max_iter": 10} if "HistGradient" in estimator else {"n_estimators": 5} if "Forest" in estimator else {}
    spec = FeatureSpec(target="y", numeric=["a", "b"], categorical=["c"], task=task)
    model = Pipeline([("features", make_transform(spec)), ("model", kind(**params))]).fit(x, y)
    outputs = _Outputs(model, x, task)
    if task == "classification":  # labels taken from the probabilities are the model's own predictions
        assert (outputs.labels == model.predict(x)).all()
    found = feature_importance(model, x, y, metric=metric, seed=3, outputs=outputs, task=task)
    rows = np.sort(np.random.default_rng(3).choice(len(x), size=2000, replace=False))
    expected = permutation_importance(model, x.iloc[rows], y[rows], scoring=_SCORERS[metric], n_repeats=3,
                                      random_state=3).importances_mean
    assert found == pytest.approx(dict(zip(x.columns, expected, strict=True)), abs=1e-12)
    assert feature_importance(model, x, y, metric=metric, seed=3, task=task) == found  # without outputs too


def _layouts():
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    class Subclass(ColumnTransformer):
        pass

    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    numbers = ["a", "b", "d"]
    return {
        # built part by part
        "passthrough and a part reading two columns": (ColumnTransformer(
            [("ab", PCA(n_components=2), ["a", "b"]), ("c", onehot, ["c"]), ("copy", "passthrough", ["d"])]), True),
        "dropped part, remainder passed through": (ColumnTransformer(
            [("a", StandardScaler(), ["a"]), ("gone", "drop", ["c"])], remainder="passthrough"), True),
        "remainder an estimator": (ColumnTransformer([("c", onehot, ["c"])], remainder=StandardScaler()), True),
        "a column read by two parts": (ColumnTransformer(
            [("ab", StandardScaler(), ["a", "b"]), ("squares", FunctionTransformer(np.square), ["a", "d"]),
             ("c", onehot, ["c"])]), True),
        "columns chosen by dtype": (ColumnTransformer(
            [("n", StandardScaler(), make_column_selector(dtype_include=np.number)),
             ("c", onehot, make_column_selector(dtype_exclude=np.number))]), True),
        "pandas categories": (ColumnTransformer([("a", StandardScaler(), numbers), ("c", onehot, ["c"])]), True),
        "a sparse part in a dense output": (ColumnTransformer(
            [("a", StandardScaler(), numbers), ("c", OneHotEncoder(), ["c"])], sparse_threshold=0), True),
        "a step after the column transformer": (make_pipeline(ColumnTransformer(
            [("ab", SimpleImputer(), numbers), ("c", onehot, ["c"])]), StandardScaler()), True),
        # transformed whole
        "weighted parts": (ColumnTransformer([("a", StandardScaler(), numbers), ("c", onehot, ["c"])],
                                             transformer_weights={"a": 2.0, "c": 0.5}), False),
        "sparse output": (ColumnTransformer([("a", StandardScaler(), numbers),
                                             ("c", OneHotEncoder(), ["c"])], sparse_threshold=1.0), False),
        "pandas output": (ColumnTransformer([("a", StandardScaler(), numbers), ("c", onehot, ["c"])])
                          .set_output(transform="pandas"), False),
        "columns by position": (ColumnTransformer([("a", StandardScaler(), [0, 1, 3]), ("c", onehot, [2])]), False),
        "a part's column as one name": (ColumnTransformer(
            [("a", StandardScaler(), ["a", "b"]), ("d", FunctionTransformer(lambda s: s.to_numpy()[:, None]), "d"),
             ("c", onehot, ["c"])]), False),
        "a column transformer subclass": (Subclass([("a", StandardScaler(), numbers), ("c", onehot, ["c"])]), False),
        "no column transformer": (FunctionTransformer(lambda x: x[numbers].to_numpy()), False),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_importance_transformed_part_by_part_is_scikit_learns_for_any_layout(shop, layout):
    # A shuffled column re-transforms only the parts that read it; the numbers stay scikit-learn's.
    import pandas as pd
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks import evaluate
    from prefect_mlops.tasks.evaluate import _SCORERS, feature_importance

    x, label, value = shop
    x = x.assign(d=pd.Series(value).round(1))
    if layout == "pandas categories":
        x = x.assign(c=x["c"].astype("category"))
    transform, by_parts = _layouts()[layout]
    steps = transform.steps if isinstance(transform, Pipeline) else [("features", transform)]
    model = Pipeline([*steps, ("model", LogisticRegression(max_iter=500))]).fit(x, label)
    rows = np.sort(np.random.default_rng(5).choice(len(x), size=2000, replace=False))
    sample = x.iloc[rows].reset_index(drop=True)
    orders = [np.random.default_rng(r).permutation(2000) for r in range(3)]
    blocks = evaluate._shuffled_transform(model, sample, orders)
    assert (blocks is not None) == by_parts
    if by_parts:  # each column's block is the whole transform of that column's shuffled copies
        for column, block in zip(sample.columns, blocks, strict=True):
            copies = pd.concat([sample.assign(**{column: sample[column].take(o).to_numpy()}) for o in orders],
                               ignore_index=True)
            if layout == "pandas categories":
                copies["c"] = copies["c"].astype(x["c"].dtype)
            np.testing.assert_array_equal(block, model[:-1].transform(copies))
    for metric in ("roc_auc", "log_loss"):
        found = feature_importance(model, x, label, metric=metric, seed=5)
        expected = permutation_importance(model, x.iloc[rows], label[rows], scoring=_SCORERS[metric], n_repeats=3,
                                          random_state=5).importances_mean
        assert found == pytest.approx(dict(zip(x.columns, expected, strict=True)), abs=1e-12)


def test_importance_of_a_transform_with_no_output_is_scikit_learns(shop):
    # Every part dropped: the ColumnTransformer outputs nothing (and sets few attributes); nothing fails.
    from sklearn.compose import ColumnTransformer
    from sklearn.dummy import DummyClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.pipeline import Pipeline

    from prefect_mlops.tasks.evaluate import feature_importance

    x, label, _ = shop
    model = Pipeline([("f", ColumnTransformer([("x", "drop", ["a"])])), ("m", DummyClassifier())]).fit(x, label)
    found = feature_importance(model, x, label, metric="accuracy", seed=5)
    rows = np.sort(np.random.default_rng(5).choice(len(x), size=2000, replace=False))
    expected = permutation_importance(model, x.iloc[rows], label[rows], scoring="f1_macro", n_repeats=3,
                                      random_state=5).importances_mean
    assert found == pytest.approx(dict(zip(x.columns, expected, strict=True)), abs=1e-12)


def test_importance_on_one_class_is_unknown_as_scikit_learn_says(shop):
    from sklearn.linear_model import LogisticRegression

    from prefect_mlops.tasks.evaluate import feature_importance

    x, label, _ = shop
    model = LogisticRegression().fit(x[["a", "b"]], label)
    found = feature_importance(model, x[["a", "b"]].head(50), np.ones(50, dtype=int), metric="roc_auc")
    assert set(found) == {"a", "b"} and all(math.isnan(v) for v in found.values())


@pytest.mark.system
def test_a_cycle_imports_the_figure_libraries_on_no_second_thread(
        churn_source, churn_features, fast_trainer, policy, mlflow_server, workspace, monkeypatch):
    # Two threads importing the same modules at once can deadlock: the figure's import is the stage's own.
    import threading

    from prefect_mlops.demo import period_window
    from prefect_mlops.flows import continuous_training

    started: list[str] = []
    start = threading.Thread.start

    def record(self) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", record)
    # A model of its own: no other test of the session holds or leaves its lock.
    report = continuous_training("figure-threads", churn_source, churn_features, fast_trainer, policy=policy,
                                 window=period_window(0), mlflow_server=mlflow_server, workspace=str(workspace.root))
    assert report.outcome == "promoted"
    assert not [name for name in started if "import" in name], started


@pytest.mark.parametrize("labels", [[0, 1], ["no", "yes"], [False, True]])
def test_the_block_auc_is_scikit_learns_roc_auc_with_ties_and_any_labels(labels):
    from sklearn.metrics import roc_auc_score

    from prefect_mlops.tasks.evaluate import _binary_auc, _Outputs

    rng = np.random.default_rng(11)
    rows, blocks = 400, 7
    y = np.array(labels, dtype=object if isinstance(labels[0], str) else None)[rng.integers(0, 2, rows)]
    score = rng.integers(0, 5, size=rows * blocks) / 4  # few distinct values: ties in every block
    outputs = _Outputs(None, None, "")
    outputs.proba, outputs.classes = np.column_stack([1 - score, score]), np.unique(y)
    found = _binary_auc(outputs, y, blocks)
    expected = [roc_auc_score(y, score[b * rows:(b + 1) * rows]) for b in range(blocks)]
    assert found == pytest.approx(expected, abs=1e-12, rel=0)

    outputs.proba[3, 1] = np.nan  # the scorer refuses NaN probabilities (importance unknown): so does this
    assert _binary_auc(outputs, y, blocks) is None
    outputs.classes = np.array([labels[0], "never-seen"], dtype=object)  # the scorer decides, not this shortcut
    assert _binary_auc(outputs, y, blocks) is None
    assert _binary_auc(outputs, np.full(rows, labels[0]), blocks) is None
