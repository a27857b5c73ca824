"""Evaluation plots: the challenger and the champion drawn together on the same hold-out.

Classification: ROC and precision-recall curves, calibration, and a confusion matrix per model;
regression: predicted against actual, and residuals against predicted. One PNG per problem kind,
with a panel per plot, so evaluate saves one figure (matplotlib's fixed cost is per figure).
Drawn from at most `PLOT_MAX_ROWS` hold-out rows (a seeded sample): the curves do not change
visibly past that, and the cycle's time must not grow with the hold-out.

`Painter` draws in a process of its own, beside the stage: matplotlib's import (about 0.6 s) and
the drawing (about 0.5 s) then run on another core while the stage computes the importance,
instead of after it. A thread would not do: both are pure Python and would wait on the stage's GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from prefect_mlops.workspace import remove_partial_writes, write_atomic

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
    return render(path, figure_data(y, models, task=task), title=title)


def figure_data(y: np.ndarray, models: list[Drawn], *, task: str) -> dict[str, Any]:
    """What the figure shows, as plain arrays: the curves and matrices computed with scikit-learn here,
    so that drawing them needs only matplotlib."""
    if task == "regression":
        y = y.astype(float)
        return {"task": "regression", "y": y, "low": float(np.nanmin(y)), "high": float(np.nanmax(y)),
                "models": [(m.name, m.labels.astype(float)) for m in models]}
    from sklearn import metrics
    from sklearn.calibration import calibration_curve

    scored = [m for m in models if m.proba is not None and m.classes is not None and len(m.classes) == 2]
    two_classes = len(np.unique(y)) == 2
    curves = []
    for model in scored if two_classes else []:
        positive = model.classes[-1]
        truth = (y == positive).astype(int)
        score = model.proba[:, 1]
        fpr, tpr, _ = metrics.roc_curve(truth, score)
        precision, recall, _ = metrics.precision_recall_curve(truth, score)
        observed, predicted = calibration_curve(truth, score, n_bins=10, strategy="quantile")
        curves.append({"name": model.name, "fpr": fpr, "tpr": tpr, "auc": float(metrics.auc(fpr, tpr)),
                       "precision": precision, "recall": recall,
                       "ap": float(metrics.average_precision_score(truth, score)),
                       "observed": observed, "predicted": predicted})
    labels = np.unique(np.concatenate([y, *[m.labels for m in models]]))
    matrices = [(m.name, metrics.confusion_matrix(y, m.labels, labels=labels)) for m in models]
    return {"task": "classification", "curves": curves, "scored": bool(scored and two_classes),
            "labels": [str(v) for v in labels], "matrices": matrices}


def render(path: Path, data: dict[str, Any], *, title: str) -> Path:
    """Draw `figure_data`'s arrays into the PNG at `path`; returns it."""
    # A Figure without pyplot renders with the Agg canvas: no display needed on a worker, no global
    # state, and a user's own pyplot backend (a notebook's) is left as it was.
    from matplotlib.figure import Figure

    if data["task"] == "regression":
        figure = Figure(figsize=(10, 4.5), dpi=80)
        _regression(figure, data)
        figure.subplots_adjust(top=0.86, bottom=0.12, left=0.07, right=0.98, wspace=0.25)
    else:
        figure = Figure(figsize=(15, 8.5), dpi=80)
        _classification(figure, data)
        # Fixed margins: matplotlib's constrained layout would double the figure's cost.
        figure.subplots_adjust(top=0.91, bottom=0.07, left=0.05, right=0.98, hspace=0.32, wspace=0.22)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Renamed into place: a drawing stopped half-way never leaves a cut PNG to upload.
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".") or "png"),
                        stage="evaluation figure")


def _regression(figure: Any, data: dict[str, Any]) -> None:
    actual, residuals = figure.subplots(1, 2)
    y, low, high = data["y"], data["low"], data["high"]
    for name, predicted in data["models"]:
        actual.scatter(y, predicted, s=4, alpha=0.4, label=name)
        residuals.scatter(predicted, y - predicted, s=4, alpha=0.4, label=name)
    actual.plot([low, high], [low, high], color="grey", linewidth=1, label="perfect")
    actual.set(title="Predicted against actual", xlabel="actual", ylabel="predicted")
    residuals.axhline(0, color="grey", linewidth=1)
    residuals.set(title="Residuals (actual - predicted)", xlabel="predicted", ylabel="residual")
    for axes in (actual, residuals):
        axes.legend(loc="best")


def _classification(figure: Any, data: dict[str, Any]) -> None:
    grid = figure.subplots(2, 3)
    roc, pr, calibration = grid[0]
    matrices = list(grid[1])
    for curve in data["curves"]:
        roc.plot(curve["fpr"], curve["tpr"], label=f"{curve['name']} (AUC {curve['auc']:.3f})")
        pr.plot(curve["recall"], curve["precision"], label=f"{curve['name']} (AP {curve['ap']:.3f})")
        calibration.plot(curve["predicted"], curve["observed"], marker="o", markersize=3, label=curve["name"])
    roc.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    roc.set(title="ROC curve", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall curve", xlabel="recall", ylabel="precision")
    calibration.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--", label="perfectly calibrated")
    calibration.set(title="Calibration (deciles of the score)", xlabel="mean predicted probability",
                    ylabel="observed share positive")
    for axes in (roc, pr, calibration):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize="small")
    if not data["scored"]:
        roc.set_title("ROC curve (two classes with probabilities only)")
    labels = data["labels"]
    for axes, (name, matrix) in zip(matrices, data["matrices"], strict=False):
        axes.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        axes.set(title=f"Confusion matrix: {name}", xlabel="predicted", ylabel="actual",
                 xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels)
    for axes in matrices[len(data["matrices"]):]:
        axes.set_axis_off()


class Painter:
    """A process that imports matplotlib as soon as it starts, then draws one figure when asked.

    Start it before the work that precedes the figure, ask with `draw`, collect with `result`; `close`
    (or leaving the `with` block) stops it whatever happened. A process that cannot start or fails
    leaves the figure to be drawn in the stage, as without a painter; one that takes longer than
    `timeout` seconds is stopped. Whatever goes wrong is reported by `result` as a text, never
    raised: the figure illustrates, it does not decide.

    Example:
        ```python
        import tempfile, pathlib
        import numpy as np
        from prefect_mlops.tasks._plots import Drawn, Painter
        y = np.array([0, 1, 0, 1])
        proba = np.array([[.8, .2], [.3, .7], [.6, .4], [.1, .9]])
        out = pathlib.Path(tempfile.mkdtemp()) / "c.png"
        with Painter() as painter:
            painter.draw(out, y, [Drawn("challenger", np.array([0, 1, 0, 1]), proba, np.array([0, 1]))],
                         task="classification", title="m")
            assert painter.result() is None and out.stat().st_size > 0
        ```
    """

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout, self.error = timeout, None
        self.proc: subprocess.Popen[bytes] | None = None
        self.asked: tuple[Path, dict[str, Any], str] | None = None
        self.folder = self.log = None
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="prefect-mlops-figure-"))  # private (0700): the request
            self.log = self.folder / "painter.log"
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "prefect_mlops.tasks._plots", str(self.folder),
                                              str(os.getpid())],
                                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        except Exception as exc:  # no folder, no interpreter (sys.executable can be empty): the stage draws
            self.error = f"the drawing process did not start ({type(exc).__name__}: {exc})"
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = self.log = None

    def __enter__(self) -> Painter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def draw(self, path: Path, y: np.ndarray, models: list[Drawn], *, task: str, title: str) -> None:
        """Hand the figure's data to the process, which draws it into `path` (returns at once)."""
        # The curves are computed here, where scikit-learn is loaded: the process imports matplotlib only.
        self.asked = (path, figure_data(y, models, task=task), title)
        if self.proc is None or self.folder is None:
            return
        request = _write_request(self.folder, {"path": str(path), "title": title, "data": self.asked[1]})
        try:
            self.proc.stdin.write(f"{request}\n".encode())
            self.proc.stdin.close()
        except OSError as exc:  # the process died before it was asked
            self.error = f"the drawing process ended early ({exc}; {self._tail()})"

    def result(self) -> str | None:
        """Wait for the figure; None when it was drawn, else why not.

        When the process could not start or failed, the figure is drawn here instead, as it would be
        without a painter (a figure that cannot be drawn at all is reported, not raised).
        """
        if not self.asked:
            return self.error or "no figure was asked for"
        if self.error is None and self.proc is not None:
            try:
                code = self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self._stop()  # now, not when the stage ends: it must not write the figure after this
                return f"the drawing process took longer than {self.timeout:.0f} s and was stopped"
            if code == 0:
                return None
            self.error = f"the drawing process failed (exit {code}: {self._tail()})"
            self._remove_partial()  # however it ended (SIGKILL, out of memory), nothing cut stays beside it
        path, data, title = self.asked
        try:
            render(path, data, title=title)
        except Exception as exc:
            return f"{self.error}; drawing it here failed too ({type(exc).__name__}: {exc})"
        return None

    def close(self) -> None:
        """Stop the process if it still runs, and remove its request."""
        if self.proc is not None:
            if self.proc.poll() is None:  # not asked, or given up on: nothing to wait for
                self._stop()
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _stop(self, grace: float = 5.0) -> None:
        """SIGTERM first: the process then removes a half-written figure (its SIGTERM ends it through
        `SystemExit`, which `write_atomic` cleans up after); SIGKILL if it has not ended within `grace`,
        and what it was writing is removed here."""
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._remove_partial()

    def _remove_partial(self) -> None:
        if self.asked and self.proc is not None:
            remove_partial_writes(self.asked[0], self.proc.pid)

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1][-500:] if lines else "no output"


def _paint(folder: Path | None = None, parent: int | None = None) -> int:
    """The painter's side: import what drawing needs, then draw the one figure asked for on stdin.

    `folder` is the painter's own: the stage (process `parent`) removes it when it closes the painter;
    if the stage's process died instead (killed: its pipe closed, this process adopted), this one does.
    """
    try:
        return _draw_when_asked()
    finally:
        if folder is not None and parent is not None and os.getppid() != parent:
            shutil.rmtree(folder, ignore_errors=True)  # the stage is gone: nobody else will remove it


def _draw_when_asked() -> int:
    # Stopped (SIGTERM), it unwinds: a figure being written is removed, never left cut beside the real one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    import matplotlib.figure  # noqa: F401 - imported while the stage still computes
    from matplotlib.backends import backend_agg  # noqa: F401

    line = sys.stdin.readline().strip()
    if not line:  # not asked: the stage decided against a figure, or stopped
        return 0
    request = _read_request(Path(line))
    for name in ("request.json", "arrays.npz"):  # read: nothing of the data stays on disk, whatever follows
        Path(line).with_name(name).unlink(missing_ok=True)
    render(Path(request["path"]), request["data"], title=request["title"])
    return 0


def _write_request(folder: Path, request: dict[str, Any]) -> Path:
    """The request as JSON, its arrays in an .npz beside it: plain data, nothing that runs code when read."""
    arrays: dict[str, np.ndarray] = {}

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    skeleton = json.dumps(plain(request))
    np.savez(folder / "arrays.npz", **arrays)
    path = folder / "request.json"
    path.write_text(skeleton)
    return path


def _read_request(path: Path) -> dict[str, Any]:
    with np.load(path.with_name("arrays.npz"), allow_pickle=False) as arrays:
        def restore(value: Any) -> Any:
            if isinstance(value, dict):
                return arrays[value["__array__"]] if set(value) == {"__array__"} else \
                    {k: restore(v) for k, v in value.items()}
            if isinstance(value, list):
                return [restore(v) for v in value]
            return value

        return restore(json.loads(path.read_text()))


if __name__ == "__main__":
    sys.exit(_paint(Path(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else _paint())
