"""Evaluation plots: the challenger and the champion drawn together on the same hold-out.

Classification: ROC and precision-recall curves, calibration, and a confusion matrix per model;
regression: predicted against actual, and residuals against predicted. One PNG per problem kind,
with a panel per plot, so evaluate saves one figure (matplotlib's fixed cost is per figure).
Drawn from at most `PLOT_MAX_ROWS` hold-out rows (a seeded sample): the curves do not change
visibly past that, and the cycle's time must not grow with the hold-out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PLOT_MAX_ROWS = 20_000


class Drawn:
    """One model's outputs on the plotted rows."""

    def __init__(self, name: str, labels: np.ndarray, proba: np.ndarray | None, classes: np.ndarray | None) -> None:
        self.name, self.labels, self.proba, self.classes = name, labels, proba, classes


def sample_rows(rows: int, *, seed: int = 0, limit: int = PLOT_MAX_ROWS) -> np.ndarray | slice:
    """All rows, or a seeded sorted sample of `limit` of them."""
    if rows <= limit:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def draw(path: Path, y: np.ndarray, models: list[Drawn], *, task: str, title: str) -> Path:
    """Save the evaluation figure for `models` (challenger first) to `path`; returns it.

    Example:
        ```python
        import tempfile, pathlib
        import numpy as np
        from prefect_mlops.tasks._plots import Drawn, draw
        y = np.array([0, 1, 0, 1, 1, 0])
        proba = np.array([[.8, .2], [.3, .7], [.6, .4], [.1, .9], [.4, .6], [.7, .3]])
        model = Drawn("challenger", (proba[:, 1] > .5).astype(int), proba, np.array([0, 1]))
        out = draw(pathlib.Path(tempfile.mkdtemp()) / "c.png", y, [model], task="classification", title="m")
        assert out.stat().st_size > 0
        ```
    """
    # A Figure without pyplot renders with the Agg canvas: no display needed on a worker, no global
    # state, and a user's own pyplot backend (a notebook's) is left as it was.
    from matplotlib.figure import Figure

    if task == "regression":
        figure = Figure(figsize=(10, 4.5), dpi=80)
        _regression(figure, y, models)
        figure.subplots_adjust(top=0.86, bottom=0.12, left=0.07, right=0.98, wspace=0.25)
    else:
        figure = Figure(figsize=(15, 8.5), dpi=80)
        _classification(figure, y, models)
        # Fixed margins: matplotlib's constrained layout would double the figure's cost.
        figure.subplots_adjust(top=0.91, bottom=0.07, left=0.05, right=0.98, hspace=0.32, wspace=0.22)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _regression(figure: Any, y: np.ndarray, models: list[Drawn]) -> None:
    actual, residuals = figure.subplots(1, 2)
    y = y.astype(float)
    low, high = float(np.nanmin(y)), float(np.nanmax(y))
    for model in models:
        predicted = model.labels.astype(float)
        actual.scatter(y, predicted, s=4, alpha=0.4, label=model.name)
        residuals.scatter(predicted, y - predicted, s=4, alpha=0.4, label=model.name)
    actual.plot([low, high], [low, high], color="grey", linewidth=1, label="perfect")
    actual.set(title="Predicted against actual", xlabel="actual", ylabel="predicted")
    residuals.axhline(0, color="grey", linewidth=1)
    residuals.set(title="Residuals (actual - predicted)", xlabel="predicted", ylabel="residual")
    for axes in (actual, residuals):
        axes.legend(loc="best")


def _classification(figure: Any, y: np.ndarray, models: list[Drawn]) -> None:
    from sklearn import metrics
    from sklearn.calibration import calibration_curve

    grid = figure.subplots(2, 3)
    roc, pr, calibration = grid[0]
    matrices = list(grid[1])
    scored = [m for m in models if m.proba is not None and m.classes is not None and len(m.classes) == 2]
    two_classes = len(np.unique(y)) == 2
    for model in scored if two_classes else []:
        positive = model.classes[-1]
        truth = (y == positive).astype(int)
        score = model.proba[:, 1]
        fpr, tpr, _ = metrics.roc_curve(truth, score)
        roc.plot(fpr, tpr, label=f"{model.name} (AUC {metrics.auc(fpr, tpr):.3f})")
        precision, recall, _ = metrics.precision_recall_curve(truth, score)
        pr.plot(recall, precision,
                label=f"{model.name} (AP {metrics.average_precision_score(truth, score):.3f})")
        observed, predicted = calibration_curve(truth, score, n_bins=10, strategy="quantile")
        calibration.plot(predicted, observed, marker="o", markersize=3, label=model.name)
    roc.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    roc.set(title="ROC curve", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall curve", xlabel="recall", ylabel="precision")
    calibration.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--", label="perfectly calibrated")
    calibration.set(title="Calibration (deciles of the score)", xlabel="mean predicted probability",
                    ylabel="observed share positive")
    for axes in (roc, pr, calibration):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
    if not scored or not two_classes:
        roc.set_title("ROC curve (two classes with probabilities only)")
    labels = np.unique(np.concatenate([y, *[m.labels for m in models]]))
    for axes, model in zip(matrices, models, strict=False):
        matrix = metrics.confusion_matrix(y, model.labels, labels=labels)
        axes.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        axes.set(title=f"Confusion matrix: {model.name}", xlabel="predicted", ylabel="actual",
                 xticks=range(len(labels)), yticks=range(len(labels)),
                 xticklabels=[str(v) for v in labels], yticklabels=[str(v) for v in labels])
    for axes in matrices[len(models):]:
        axes.set_axis_off()
