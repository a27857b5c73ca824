"""Storage faults: a full disk at every write names the path and leaves nothing half-written;
a champion whose model files are gone names the version, the alias and the URI at every load.

A full disk cannot be made safely in a test, so the one low-level write at each site is
replaced by one that writes part of its file and then fails with ENOSPC (or EDQUOT), as the
operating system would. Everything else is real: files, Parquet, GX suites and an MLflow SQLite store.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from prefect_mlops.blocks import DataSource, ModelPolicy
from prefect_mlops.demo import period_window
from prefect_mlops.errors import RegistryError, StorageError, disk_full_hint
from prefect_mlops.flows import batch_score
from prefect_mlops.tasks.evaluate import evaluate_models
from prefect_mlops.tasks.ingest import ingest_dataset
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.tasks.performance import check_performance
from prefect_mlops.tasks.score import score_dataset
from prefect_mlops.tasks.validate import validate_dataset
from prefect_mlops.workspace import read_frame, write_atomic
from tests.tasks.stages import promote_cycle, train_and_judge


def _fill_then_fail(code: int = errno.ENOSPC):
    """A write that puts a few bytes in its file, then finds the disk full."""
    def write(target) -> None:
        with open(target, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded",
                      str(target))
    return write


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def champion(churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=period_window(0))
    client = mlflow_server.client(workspace)
    for name, value in cycle.evaluation.challenger.overall.items():  # what evaluate logs: the reference
        client.log_metric(cycle.trained.run_id, f"holdout_{name}", value)
    client.log_metric(cycle.trained.run_id, "holdout_rows", cycle.evaluation.holdout_rows)
    promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    return find_model("churn", mlflow_server=mlflow_server, workspace=workspace)


def _delete_files(champion) -> str:
    source = champion.model.source
    shutil.rmtree(source.removeprefix("file://"))
    return source


# ---- a full disk at each kind of write ----------------------------------------------------------

def test_the_hint_names_the_path_for_enospc_and_edquot_only():
    assert disk_full_hint(OSError(errno.ENOSPC, "No space left on device"), "/d/x") == (
        "no space left on the device holding /d/x: free space there and retry")
    assert disk_full_hint(OSError(errno.EDQUOT, "Disk quota exceeded"), "/d/x").startswith(
        "disk quota exceeded on the device holding /d/x")
    assert disk_full_hint(OSError("Error writing bytes: No space left on device"), "/d/x") is not None  # Arrow
    assert disk_full_hint(OSError(errno.EACCES, "Permission denied"), "/d/x") is None
    assert disk_full_hint(RuntimeError("No space left on device"), "/d/x") is None


def test_a_failed_atomic_write_that_is_not_a_full_disk_leaves_no_temp_file_and_keeps_its_error(tmp_path):
    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise ValueError("encoder broke")
    with pytest.raises(ValueError, match="encoder broke"):
        write_atomic(tmp_path / "out.bin", broken, stage="test")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_writing_a_snapshot_names_the_path_and_leaves_no_file(workspace, monkeypatch, code):
    import pyarrow as pa

    frame = pd.DataFrame({"x": [1, 2, 3]})

    def full(self, batch) -> None:  # the file holds its schema already: half a snapshot on disk
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded")
    # Snapshots are Arrow IPC files written batch by batch; the disk fills up on the first batch.
    monkeypatch.setattr(pa.ipc.RecordBatchFileWriter, "write_batch", full)
    folder = workspace.root / "datasets" / "orders"
    with pytest.raises(StorageError, match=rf"snapshot of 'orders': .* the device holding {folder}/\S+\.tmp: "
                                           r"free space there or point PREFECT_MLOPS_WORKSPACE elsewhere"):
        workspace.write_snapshot(frame, name="orders")
    assert _leftovers(folder) == []
    monkeypatch.undo()
    ref = workspace.write_snapshot(frame, name="orders")  # with room again, the same call works
    assert read_frame(ref).equals(frame)


def test_a_full_disk_while_saving_a_suite_names_the_path_and_leaves_no_suite(churn_source, workspace, monkeypatch):
    dataset = ingest_dataset(churn_source, name="churn", window=period_window(0), workspace=workspace)
    suite = workspace.root / "suites" / "learned.json"
    suite.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: _fill_then_fail()(self))
    with pytest.raises(StorageError, match=rf"expectation suite learned.json: no space left on the device holding "
                                           rf"{suite}: free space there or point PREFECT_MLOPS_WORKSPACE"):
        validate_dataset(dataset, suite_path=str(suite), workspace=workspace)
    assert _leftovers(suite.parent) == []


def test_a_full_disk_while_logging_the_model_names_the_artifact_path_and_removes_the_partial_copy(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    def full(self, local_dir, artifact_path=None):
        dest = Path(self.artifact_dir) / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        _fill_then_fail()(dest / "model.pkl")
    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", full)
    with pytest.raises(StorageError, match=r"logging the model of run \w+: no space left on the device holding "
                                           r"file://\S+/artifacts/model: free space there or point "
                                           r"PREFECT_MLOPS_WORKSPACE elsewhere, then retry; the partial 'model' "
                                           r"artifact was removed"):
        train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                        window=period_window(0))
    client = mlflow_server.client(workspace)
    runs = client.search_runs([mlflow_server.experiment_id(workspace)])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not Path(runs[0].info.artifact_uri.removeprefix("file://"), "model").exists()


def test_a_full_disk_while_writing_the_smoke_sample_names_the_path_and_leaves_no_sample(
        churn_source, churn_features, fast_trainer, mlflow_server, workspace, monkeypatch):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=period_window(0))
    samples = workspace.root / "samples"
    shutil.rmtree(samples)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda self, target, **kw: _fill_then_fail()(target))
    with pytest.raises(StorageError, match=rf"evaluation smoke sample: no space left on the device holding "
                                           rf"{samples}/{cycle.trained.run_id}\.parquet"):
        evaluate_models(cycle.trained, cycle.features, mlflow_server=mlflow_server, workspace=workspace,
                        bootstrap_samples=0)
    assert _leftovers(samples) == []


def test_a_full_disk_while_writing_batch_predictions_names_the_output_and_leaves_none(
        champion, churn_source, mlflow_server, workspace, tmp_path, monkeypatch):
    dataset = ingest_dataset(churn_source, name="churn-scoring", window=period_window(1), workspace=workspace)
    out = tmp_path / "scored" / "predictions.parquet"
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda self, target, **kw: _fill_then_fail()(target))
    with pytest.raises(StorageError, match=rf"batch scoring output: no space left on the device holding {out}: "
                                           r"free space there or give another output_uri"):
        score_dataset(dataset, model_name="churn", output_uri=str(out), mlflow_server=mlflow_server,
                      workspace=workspace)
    assert _leftovers(out.parent) == []


# ---- a champion whose model files are gone ----------------------------------------------------

def test_batch_score_names_version_alias_and_uri_when_the_model_files_are_gone(
        champion, churn_file, mlflow_server, workspace, tmp_path):
    source = _delete_files(champion)
    with pytest.raises(RegistryError, match=rf"model 'churn' v1 \(@champion\): model artifacts not found at "
                                            rf"{source} .*train and register a new version"):
        batch_score("churn", DataSource(uri=str(churn_file)), str(tmp_path / "scored.parquet"),
                    mlflow_server=mlflow_server, workspace=str(workspace.root))
    assert not (tmp_path / "scored.parquet").exists()


def test_the_performance_check_names_version_alias_and_uri_when_the_champion_files_are_gone(
        champion, churn_source, mlflow_server, workspace):
    current = ingest_dataset(churn_source, name="churn-current", window=period_window(1), workspace=workspace)
    source = _delete_files(champion)
    with pytest.raises(RegistryError, match=rf"champion 'churn' v1 \(@champion\): model artifacts not found at "
                                            rf"{source}"):
        check_performance(current, champion, mlflow_server=mlflow_server, workspace=workspace)


def test_evaluate_names_version_alias_and_uri_when_the_champion_files_are_gone(
        champion, churn_source, churn_features, fast_trainer, mlflow_server, workspace):
    source = _delete_files(champion)
    with pytest.raises(RegistryError, match=rf"champion 'churn' v1 \(@champion\): model artifacts not found at "
                                            rf"{source}"):
        train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                        window=period_window(1), policy=ModelPolicy(max_drop=1.0))
    assert find_model("churn", mlflow_server=mlflow_server, workspace=workspace).model.version == "1"
