"""The model-files process: work done in a forked copy, and done here whenever the copy cannot do it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefect_mlops import model_io

pytestmark = pytest.mark.skipif(not model_io.enabled(), reason="no copy here: Linux with two cores or more only")


def pid() -> int:
    return os.getpid()


def refuse(column: str) -> None:
    raise KeyError(f"column {column!r} is missing")


def wait_then(seconds: float, value: str) -> str:
    time.sleep(seconds)
    return value


def a_lambda() -> object:
    return lambda: "made where it ran"


def warn_and_log(text: str) -> str:
    import logging
    import warnings

    warnings.warn(f"{text} (a warning)", FutureWarning, stacklevel=1)
    logging.getLogger("prefect_mlops.test_copy").warning("%s (a log line)", text)
    logging.getLogger("prefect_mlops.test_copy").warning("%s (another log line)", text)
    return text


def warn_then_refuse(column: str) -> None:
    import warnings

    warnings.warn(f"{column} is deprecated", FutureWarning, stacklevel=1)
    raise KeyError(f"column {column!r} is missing")


def nested(value: int) -> tuple[int, int]:
    """A call that calls `run` itself: inside the copy it must run there, at once."""
    return model_io.run(pid), value


def try_lock(path: str) -> bool:
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def gone(process_id: int, within: float = 10.0) -> bool:
    """Whether the process exited (a zombie nobody reaped counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{process_id}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def copy():
    assert model_io.start(imports=())
    yield model_io._copy
    model_io.stop()


def test_the_work_runs_in_the_copy_and_its_result_comes_back(copy):
    assert model_io.run(pid) == copy.pid != os.getpid()
    assert model_io.run(wait_then, 0, "twice") == "twice"  # the copy serves one call after another


def test_an_error_in_the_copy_is_raised_here_with_its_own_type_and_the_copy_serves_on(copy):
    with pytest.raises(KeyError, match="column 'amount' is missing"):
        model_io.run(refuse, "amount")
    assert model_io.run(pid) == copy.pid


def test_an_interrupted_call_stops_the_copy_so_its_late_answer_is_never_read_as_the_next(copy):
    def interrupt(*_):
        raise KeyboardInterrupt("the run was interrupted")

    assert model_io.run(pid) == copy.pid  # ready: the alarm falls mid-call, not during the import
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt, match="the run was interrupted"):
            model_io.run(wait_then, 1.5, "the late answer")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert gone(copy.pid) and model_io._copy is None
    assert model_io.run(wait_then, 0, "the next answer") == "the next answer"


def test_the_copys_warnings_and_log_lines_are_emitted_here(copy, caplog):
    with pytest.warns(FutureWarning, match="drifted column 'age' \\(a warning\\)"):
        assert model_io.run(warn_and_log, "drifted column 'age'") == "drifted column 'age'"
    assert "drifted column 'age' (a log line)" in caplog.text
    assert "drifted column 'age' (another log line)" in caplog.text
    assert copy.served == 1  # it ran there


def test_what_the_copy_warned_is_said_once_when_the_call_runs_here_again(copy):
    with pytest.warns(FutureWarning, match="amount is deprecated") as said, \
            pytest.raises(KeyError, match="column 'amount' is missing"):
        model_io.run(warn_then_refuse, "amount")
    assert len([w for w in said if issubclass(w.category, FutureWarning)]) == 1


def test_a_call_made_inside_the_copy_runs_there(copy, monkeypatch):
    monkeypatch.setattr(model_io, "CALL_SECONDS", 10.0)  # a deadlock there would fall back here: a wrong pid
    assert model_io.run(nested, 7) == (copy.pid, 7)


def test_a_fork_of_the_run_leaves_the_runs_copy_alone(copy):
    child = os.fork()
    if child == 0:  # the forked child of the run: its own `stop()` must not touch the run's copy
        code = 1
        try:
            model_io.stop()
            code = 0 if model_io._copy is None else 2
        finally:
            os._exit(code)
    assert os.waitpid(child, 0)[1] == 0
    assert Path(copy.folder).is_dir() and model_io.run(pid) == copy.pid


def test_the_copy_holds_no_lock_of_this_process(tmp_path):
    import fcntl

    path = str(tmp_path / "churn.lock")
    handle = open(path, "a")  # closed below, which must release the lock
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        assert model_io.start(imports=())
        assert model_io.run(pid) == model_io._copy.pid
    finally:
        handle.close()  # the release: with an inherited descriptor the copy would keep the lock
    try:
        assert try_lock(path)
    finally:
        model_io.stop()


def test_a_killed_copy_leaves_the_work_to_this_process(copy):
    os.kill(copy.pid, signal.SIGKILL)
    assert gone(copy.pid)
    assert model_io.run(pid) == os.getpid()
    assert model_io._copy is None  # not asked again
    assert model_io.run(pid) == os.getpid()


def test_what_does_not_pickle_runs_here_and_the_copy_serves_on(copy):
    assert model_io.run(len, [lambda: 1]) == 1  # an argument that cannot cross
    assert model_io.run(a_lambda)() == "made where it ran"  # a result that cannot come back
    assert model_io.run(pid) == copy.pid


def test_a_copy_stuck_importing_is_stopped_and_the_work_done_here(tmp_path, monkeypatch):
    (tmp_path / "never_done_importing.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(model_io, "READY_SECONDS", 1.0)
    assert model_io.start(imports=("never_done_importing",))
    stuck = model_io._copy.pid
    started = time.monotonic()
    assert model_io.run(pid) == os.getpid()
    assert time.monotonic() - started < 5
    assert gone(stuck) and model_io._copy is None


def test_a_call_slower_than_the_limit_is_stopped_and_done_here(copy, monkeypatch):
    monkeypatch.setattr(model_io, "CALL_SECONDS", 0.3)
    assert model_io.run(wait_then, 1.0, "done here") == "done here"
    assert gone(copy.pid) and model_io._copy is None


def test_a_copy_that_cannot_import_what_it_needs_leaves_the_work_here_and_says_so(caplog):
    assert model_io.start(imports=("prefect_mlops_no_such_module",))
    assert model_io.run(pid) == os.getpid() and model_io._copy is None
    assert "could not import what it needs" in caplog.text and "prefect_mlops_no_such_module" in caplog.text
    assert "PREFECT_MLOPS_MODEL_PROCESS=0" in caplog.text


def test_a_copy_that_outlives_sigkill_mid_call_stops_the_run_instead_of_writing_twice(copy, monkeypatch):
    from prefect_mlops.errors import StorageError

    monkeypatch.setattr(model_io, "CALL_SECONDS", 0.5)
    monkeypatch.setattr(model_io._Copy, "stop", lambda self: False)  # as a copy stuck in uninterruptible I/O
    try:
        with pytest.raises(StorageError, match=f"pid {copy.pid}.*wait_then was not run again here"):
            model_io.run(wait_then, 3.0, "written twice")
    finally:
        os.kill(copy.pid, signal.SIGKILL)
        os.waitpid(copy.pid, 0)


def test_an_idle_copy_exits_quietly_and_the_next_call_runs_here(monkeypatch, caplog):
    monkeypatch.setattr(model_io, "IDLE_SECONDS", 2.0)  # read by the copy, which is forked after this
    assert model_io.start(imports=())
    idle, folder = model_io._copy.pid, model_io._copy.folder
    time.sleep(3)  # before its first call a copy waits as long as the run fits
    assert model_io.run(pid) == idle
    assert gone(idle, within=15) and not Path(folder).exists()  # it took its folder with it
    assert model_io.run(pid) == os.getpid()
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name == "prefect_mlops.model_io"]


def test_a_serving_copy_serves_the_next_runs_and_stop_ends_it(copy):
    first = copy.pid
    assert model_io.start(imports=()) and model_io.run(pid) == first  # a backtest's next cycle: no new import
    model_io.stop()
    assert gone(first) and model_io.run(pid) == os.getpid()
    assert model_io.start(imports=())
    assert model_io.run(pid) == model_io._copy.pid != first


def test_turned_off_nothing_is_forked(monkeypatch):
    monkeypatch.setenv("PREFECT_MLOPS_MODEL_PROCESS", "0")
    assert not model_io.start(imports=()) and model_io._copy is None
    assert model_io.run(pid) == os.getpid()


def test_the_copy_ends_when_its_process_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, signal
        from prefect_mlops import model_io
        model_io.start(imports=())
        print(model_io._copy.pid, model_io._copy.folder, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    copy_pid, folder = done.stdout.split()
    assert gone(int(copy_pid))
    deadline = time.monotonic() + 10
    while Path(folder).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(folder).exists()  # nothing of the killed run's left in the temp folder


def test_a_run_saves_and_loads_skops_models_without_importing_skops(tmp_path):
    """The point of the copy: skops is imported there, never in the process that fits and predicts."""
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, pandas as pd
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.pipeline import Pipeline
        from prefect_mlops.blocks import MlflowServer
        from prefect_mlops.tasks.features import FeatureSpec, make_transform
        from prefect_mlops.tasks.lineage import TrainerSpec
        from prefect_mlops.tasks.train import _log_pipeline, start_model_files
        from prefect_mlops.workspace import Workspace

        folder = sys.argv[1]
        assert start_model_files(TrainerSpec())
        rng = np.random.default_rng(0)
        rows = pd.DataFrame({"a": rng.normal(size=300), "c": rng.choice(["x", "y"], size=300)})
        target = (rows["a"] > 0).astype(int)
        spec = FeatureSpec(target="t", numeric=["a"], categorical=["c"])
        pipeline = Pipeline([("features", make_transform(spec)),
                             ("model", HistGradientBoostingClassifier(max_iter=5))]).fit(rows, target)
        server = MlflowServer(tracking_uri=f"sqlite:///{folder}/mlflow.db",
                              artifact_location=f"file://{folder}/mlartifacts", experiment="copy")
        workspace = Workspace(f"{folder}/workspace")
        client = server.client(workspace)
        run = client.create_run(server.experiment_id(workspace))
        digest, _ = _log_pipeline(client, run.info.run_id, pipeline, rows.head(5), TrainerSpec(),
                                  artifact_path="model")
        source = f"{run.info.artifact_uri}/model"
        same = []
        for flavor in ("sklearn", "pyfunc"):
            loaded = server.load_model(source, workspace, flavor=flavor, sha256=digest)
            same.append(bool((np.asarray(loaded.predict(rows)) == pipeline.predict(rows)).all()))
        print(json.dumps({"skops_here": "skops.io" in sys.modules, "same": same, "source": source}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["same"] == [True, True]
    assert not out["skops_here"]
    meta = (Path(out["source"].removeprefix("file://")) / "MLmodel").read_text()
    assert "serialization_format: skops" in meta
