"""The evaluation figure's own process: it draws what the stage's figure would, and whatever happens to it
(cannot start, too slow, never asked, fails) the stage goes on and no process is left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from prefect_mlops.tasks._plots import Drawn, Painter, _read_request, _write_request, draw, figure_data
from tests.tasks.test_mlflow_outputs import png_size


def outputs(rows: int = 500, seed: int = 0) -> tuple[np.ndarray, list[Drawn]]:
    rng = np.random.default_rng(seed)
    y = rng.choice(["stayed", "churned é"], size=rows)
    models = []
    for name in ("challenger", "champion v3"):
        p = rng.random(rows)
        proba = np.column_stack([1 - p, p])
        models.append(Drawn(name, np.where(p > 0.5, "stayed", "churned é"), proba, np.array(["churned é", "stayed"])))
    return y, models


def test_the_painter_draws_the_same_figure_as_the_stage_would_in_another_process(tmp_path):
    y, models = outputs()
    here = draw(tmp_path / "here.png", y, models, task="classification", title="churn")
    with Painter() as painter:
        painter.draw(tmp_path / "there.png", y, models, task="classification", title="churn")
        assert painter.result() is None
        assert painter.proc.pid != __import__("os").getpid() and painter.proc.returncode == 0
    assert png_size(tmp_path / "there.png") == png_size(here)
    # The same pixels: the process renders the very arrays the stage computed.
    assert (tmp_path / "there.png").read_bytes() == here.read_bytes()


def test_a_regression_figure_is_drawn_there_too(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    models = [Drawn("challenger", y + rng.normal(scale=0.1, size=300), None, None)]
    with Painter() as painter:
        painter.draw(tmp_path / "r.png", y, models, task="regression", title="price")
        assert painter.result() is None
    assert png_size(tmp_path / "r.png")[0] > 600


def test_the_request_keeps_every_array_and_text_and_holds_no_pickle(tmp_path):
    y, models = outputs(rows=200)
    data = figure_data(y, models, task="classification")
    back = _read_request(_write_request(tmp_path, {"path": "x.png", "title": "t", "data": data}))
    assert back["data"]["labels"] == data["labels"] == ["churned é", "stayed"]
    for sent, got in zip(data["curves"], back["data"]["curves"], strict=True):
        assert set(sent) == set(got)
        for key, value in sent.items():
            assert np.array_equal(value, got[key]) if isinstance(value, np.ndarray) else value == got[key]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(data["matrices"], back["data"]["matrices"], strict=True))
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as arrays:  # would raise on an object array
        assert all(arrays[k].dtype != object for k in arrays.files)


def test_a_painter_that_cannot_start_leaves_the_figure_to_the_stage(tmp_path, monkeypatch):
    y, models = outputs()
    here = draw(tmp_path / "here.png", y, models, task="classification", title="churn")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with Painter() as painter:
        assert painter.proc is None and "did not start" in painter.error and "no-python-here" in painter.error
        painter.draw(tmp_path / "c.png", y, models, task="classification", title="churn")
        assert painter.result() is None
    assert (tmp_path / "c.png").read_bytes() == here.read_bytes()


def test_a_painter_whose_process_fails_leaves_the_figure_to_the_stage(tmp_path, monkeypatch):
    broken = tmp_path / "site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken matplotlib on this path')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))  # the process's own; this one keeps its matplotlib
    y, models = outputs()
    with Painter() as painter:
        painter.draw(tmp_path / "c.png", y, models, task="classification", title="churn")
        assert painter.result() is None
        assert painter.proc.returncode == 1 and "a broken matplotlib" in painter.error
    assert png_size(tmp_path / "c.png")[0] > 600


@pytest.mark.parametrize("executable", ["", None])
def test_an_interpreter_that_is_not_there_never_fails_the_stage_nor_leaves_a_folder(tmp_path, monkeypatch,
                                                                                     executable):
    monkeypatch.setattr(sys, "executable", executable)  # what an embedded interpreter may report
    y, models = outputs()
    with Painter() as painter:
        assert painter.proc is None and painter.folder is None and "did not start" in painter.error
        painter.draw(tmp_path / "c.png", y, models, task="classification", title="churn")
        assert painter.result() is None
    assert png_size(tmp_path / "c.png")[0] > 600


def test_a_painter_that_takes_too_long_is_stopped_and_draws_nothing_after(tmp_path):
    import time

    y, models = outputs()
    painter = Painter(timeout=0.01)  # less than its imports take
    painter.draw(tmp_path / "c.png", y, models, task="classification", title="churn")
    failed = painter.result()
    assert failed and "longer than" in failed
    assert painter.proc.returncode is not None  # stopped when given up on, not when the stage ends
    time.sleep(3)  # longer than a drawing takes: a process left running would have written the figure by now
    painter.close()
    assert not painter.folder.exists()
    assert list(tmp_path.iterdir()) == []


def stall_the_drawing_process(tmp_path, monkeypatch):
    """The drawing process (only it: PYTHONPATH is its own) writes half a PNG, then hangs."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "import matplotlib.figure\n"
        "def stalled(self, fname, *args, **kwargs):\n"
        "    open(fname, 'wb').write(b'half a png')\n"
        "    time.sleep(60)\n"
        "matplotlib.figure.Figure.savefig = stalled\n")
    monkeypatch.setenv("PYTHONPATH", str(site))


def wait_for_a_partial_write(folder: Path) -> None:
    import time

    deadline = time.monotonic() + 60
    while not list(folder.glob("c.png.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.glob("c.png.*.tmp")), "the process never started writing"


def test_a_painter_stopped_while_it_writes_leaves_no_cut_figure(tmp_path, monkeypatch):
    # The stage fails (or gives up) while the process is half-way through the PNG: stopped, it removes it.

    stall_the_drawing_process(tmp_path, monkeypatch)
    out = tmp_path / "figures"
    y, models = outputs()
    painter = Painter()
    painter.draw(out / "c.png", y, models, task="classification", title="churn")
    wait_for_a_partial_write(out)
    painter.close()
    assert painter.proc.returncode == 128 + 15  # it ended through its SIGTERM handler, not SIGKILL
    assert list(out.iterdir()) == [] and not painter.folder.exists()


def test_a_drawing_process_killed_while_it_writes_leaves_no_cut_figure_and_the_stage_draws_it(tmp_path,
                                                                                              monkeypatch):
    # SIGKILL (the kernel's out-of-memory killer, say) gives it no time to clean up: the stage does.
    import signal

    stall_the_drawing_process(tmp_path, monkeypatch)
    out = tmp_path / "figures"
    y, models = outputs()
    with Painter() as painter:
        painter.draw(out / "c.png", y, models, task="classification", title="churn")
        wait_for_a_partial_write(out)
        painter.proc.send_signal(signal.SIGKILL)
        assert painter.result() is None  # drawn here instead
        assert painter.proc.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir()] == ["c.png"] and png_size(out / "c.png")[0] > 600


@pytest.mark.parametrize("asked", [False, True])
def test_a_stage_killed_outright_leaves_no_painter_folder(tmp_path, asked):
    # SIGKILL gives the stage no time to close its painter: the painter, adopted, removes its own folder.
    import signal
    import subprocess
    import sys
    import time

    stage = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.tasks.test_plots import outputs\n"
        "from prefect_mlops.tasks._plots import Painter\n"
        "painter = Painter()\n"
        f"if {asked}:\n"
        "    y, models = outputs()\n"
        f"    painter.draw(Path({str(tmp_path)!r}) / 'c.png', y, models, task='classification', title='t')\n"
        "print(painter.folder, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    folder = Path(stage.stdout.readline().strip())
    assert folder.name.startswith("prefect-mlops-figure-") and folder.is_dir()
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    deadline = time.monotonic() + 60
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not folder.exists()


def test_the_figure_is_renamed_into_place_and_the_request_read_once(tmp_path):
    y, models = outputs()
    with Painter() as painter:
        painter.draw(tmp_path / "c.png", y, models, task="classification", title="churn")
        assert painter.result() is None
        assert sorted(p.name for p in painter.folder.iterdir()) == ["painter.log"]  # the data is gone
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # no partial file beside it


def test_a_painter_never_asked_is_stopped_and_leaves_no_files():
    painter = Painter()
    painter.close()
    assert painter.proc.returncode is not None and not painter.folder.exists()
    assert painter.result() == "no figure was asked for"


def test_a_figure_that_cannot_be_drawn_anywhere_names_both_errors(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    y, models = outputs()
    with Painter() as painter:
        painter.draw(blocked / "c.png", y, models, task="classification", title="churn")
        failed = painter.result()
    assert failed and "failed (exit 1" in failed and "a-file" in failed and "drawing it here failed too" in failed


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_draw_in_the_stage_and_figure_data_agree_on_what_is_shown(tmp_path, task):
    y, models = outputs(rows=120)
    if task == "regression":
        y = np.arange(120.0)
        models = [Drawn("challenger", y * 1.1, None, None)]
    data = figure_data(y, models, task=task)
    assert data["task"] == task
    assert Path(draw(tmp_path / "f.png", y, models, task=task, title="t")).stat().st_size > 0
