"""Model integrity: a registered model whose files changed is never loaded, scored or promoted."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pandas as pd
import pytest

from prefect_mlops.blocks import ModelPolicy
from prefect_mlops.errors import DeployError, IntegrityError
from prefect_mlops.integrity import DIGEST_TAG, MANIFEST, file_sha256
from prefect_mlops.tasks.deploy import promote
from prefect_mlops.tasks.evaluate import evaluate_models
from prefect_mlops.tasks.lineage import find_model
from prefect_mlops.tasks.register import register_version
from prefect_mlops.tasks.score import score_dataset
from prefect_mlops.workspace import read_frame
from tests.tasks.stages import train_and_judge

SECOND_WINDOW = "2024-02-01/2024-04-01"


def model_folder(server, workspace, version: str) -> Path:
    return Path(server.client(workspace).get_model_version_download_uri("churn", version).removeprefix("file://"))


def flip_one_byte(path: Path) -> tuple[str, str]:
    """Change one byte in the middle of `path`; its hash before and after."""
    before = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return before, file_sha256(path)


def test_register_records_a_checksum_of_every_model_file(first, mlflow_server, workspace):
    client = mlflow_server.client(workspace)
    version = client.get_model_version("churn", "1")
    folder = model_folder(mlflow_server, workspace, "1")
    assert version.tags[DIGEST_TAG] == first.trained.sha256 == file_sha256(folder / MANIFEST)
    assert client.get_run(first.trained.run_id).data.tags[DIGEST_TAG] == first.trained.sha256
    lineage = client.download_artifacts(first.trained.run_id, "lineage.json", str(folder.parent.parent))
    files = pd.read_json(lineage, typ="series")["model_files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(files) == on_disk and "model.skops" in files and "MLmodel" in files
    assert all(files[name] == file_sha256(folder / name) for name in files)


def test_a_tampered_challenger_is_refused_by_deploy_and_batch_scoring(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, tmp_path, champion_version):
    second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                             window=SECOND_WINDOW, policy=ModelPolicy(max_drop=1.0))
    model = register_version(second.trained, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    before, after = flip_one_byte(model_folder(mlflow_server, workspace, "2") / "model.skops")
    with pytest.raises(DeployError, match=rf"version 2.*file model.skops .* has sha256 {after}, but sha256 {before} "
                                          r"was recorded.*the model was not promoted"):
        promote(model, second.evaluation, second.verdict, mlflow_server=mlflow_server, workspace=workspace)
    assert champion_version(mlflow_server, workspace) == "1"
    rows = workspace.write_snapshot(read_frame(first.features.dataset).head(20), name="to-score")
    out = tmp_path / "scores.parquet"
    with pytest.raises(IntegrityError, match=rf"'churn' v2 \(@challenger\): file model.skops .*{after}.*{before}"):
        score_dataset(rows, model_name="churn", alias="challenger", output_uri=str(out), mlflow_server=mlflow_server,
                      workspace=workspace)
    assert not out.exists()


def test_a_tampered_champion_is_refused_by_evaluate_and_batch_scoring(
        first, churn_source, churn_features, fast_trainer, mlflow_server, workspace, tmp_path, champion_version):
    before, after = flip_one_byte(model_folder(mlflow_server, workspace, "1") / "model.skops")
    second = None
    with pytest.raises(IntegrityError, match=rf"champion 'churn' v1 \(@champion\): file model.skops .*{after}.*"
                                             rf"{before}"):
        second = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server,
                                 workspace=workspace, window=SECOND_WINDOW, policy=ModelPolicy(max_drop=1.0))
    assert second is None and champion_version(mlflow_server, workspace) == "1"
    rows = workspace.write_snapshot(read_frame(first.features.dataset).head(20), name="to-score")
    with pytest.raises(IntegrityError, match=r"'churn' v1 \(@champion\): file model.skops"):
        score_dataset(rows, model_name="churn", output_uri=str(tmp_path / "out.parquet"), mlflow_server=mlflow_server,
                      workspace=workspace)


def test_a_swapped_manifest_is_caught_by_the_registry_digest(first, mlflow_server, workspace):
    folder = model_folder(mlflow_server, workspace, "1")
    flip_one_byte(folder / "model.skops")
    manifest = (folder / MANIFEST).read_text()
    (folder / MANIFEST).write_text(manifest.replace(first_hash(manifest), file_sha256(folder / "model.skops")))
    with pytest.raises(IntegrityError, match=rf"file {MANIFEST} .* has sha256 {file_sha256(folder / MANIFEST)}, but "
                                             rf"the registry recorded {first.trained.sha256}"):
        mlflow_server.load_model(find_model("churn", mlflow_server=mlflow_server, workspace=workspace).model.source,
                                 workspace)


def first_hash(manifest: str) -> str:
    import json

    return json.loads(manifest)["files"]["model.skops"]


class _Bomb:
    """Unpickling this writes a file: proof that a load ran code from the artifact."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_version_whose_tag_was_deleted_is_checked_against_its_runs_tag(first, mlflow_server, workspace):
    mlflow_server.client(workspace).delete_model_version_tag("churn", "1", DIGEST_TAG)
    assert hasattr(mlflow_server.load_model(first.trained.model_source, workspace), "predict_proba")
    before, after = flip_one_byte(model_folder(mlflow_server, workspace, "1") / "model.skops")
    with pytest.raises(IntegrityError, match=rf"'churn' v1: file model.skops .*{after}, but sha256 {before}"):
        mlflow_server.load_model(first.trained.model_source, workspace)


def forge(folder: Path, name: str, data: bytes) -> None:
    """What someone who can write the artifact store does: swap a file and rewrite the manifest to match."""
    import hashlib
    import json

    (folder / name).write_bytes(data)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def pickled(churn_source, churn_features, mlflow_server, workspace, window0):
    """A registered cloudpickle model (k-nearest neighbours needs types outside the skops list)."""
    from prefect_mlops.tasks.train import TrainerSpec

    knn = TrainerSpec(estimator="sklearn.neighbors.KNeighborsClassifier")
    cycle = train_and_judge(churn_source, churn_features, knn, server=mlflow_server, workspace=workspace,
                            window=window0, policy=ModelPolicy(floors={}, max_drop=1.0))
    register_version(cycle.trained, cycle.verdict, mlflow_server=mlflow_server, workspace=workspace)
    return cycle


def test_a_tampered_pickle_never_reaches_the_unpickler(pickled, mlflow_server, workspace, tmp_path):
    folder = model_folder(mlflow_server, workspace, "1")
    marker = tmp_path / "pwned"
    (folder / "model.pkl").write_bytes(pickle.dumps(_Bomb(marker)))
    with pytest.raises(IntegrityError, match=r"'churn' v1: file model.pkl .* has sha256"):
        mlflow_server.load_model(pickled.trained.model_source, workspace)
    assert not marker.exists()


def test_a_pickle_swapped_after_its_checksum_tags_were_deleted_never_reaches_the_unpickler(
        pickled, mlflow_server, workspace, tmp_path, monkeypatch):
    from prefect_mlops.blocks.mlflow_server import ALLOW_UNVERIFIED_ENV

    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    client = mlflow_server.client(workspace)
    client.delete_model_version_tag("churn", "1", DIGEST_TAG)
    client.delete_tag(pickled.trained.run_id, DIGEST_TAG)
    folder = model_folder(mlflow_server, workspace, "1")
    marker = tmp_path / "pwned"
    forge(folder, "model.pkl", pickle.dumps(_Bomb(marker)))
    with pytest.raises(IntegrityError, match=rf"model 'churn' v1 \('churn' v1, at .*\) has no recorded checksum: "
                                             rf"neither its model version nor its run \({pickled.trained.run_id}\) "
                                             rf"carries tag {DIGEST_TAG}.*was not loaded.*train and register a new "
                                             rf"version.*allow_unverified_models.*{ALLOW_UNVERIFIED_ENV}=1"):
        mlflow_server.load_model(pickled.trained.model_source, workspace)
    assert not marker.exists()


def test_a_model_without_any_checksum_loads_only_when_allowed_and_with_a_warning(first, mlflow_server, workspace,
                                                                                 caplog, monkeypatch):
    from prefect_mlops.blocks.mlflow_server import ALLOW_UNVERIFIED_ENV

    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    client = mlflow_server.client(workspace)
    client.delete_model_version_tag("churn", "1", DIGEST_TAG)
    client.delete_tag(first.trained.run_id, DIGEST_TAG)
    source = first.trained.model_source
    with pytest.raises(IntegrityError, match="has no recorded checksum"):
        mlflow_server.load_model(source, workspace, what="champion 'churn' v1")
    allowed = mlflow_server.model_copy(update={"allow_unverified_models": True})
    with caplog.at_level(logging.WARNING):
        assert hasattr(allowed.load_model(source, workspace, what="champion 'churn' v1"), "predict_proba")
    assert "champion 'churn' v1 ('churn' v1, at" in caplog.text and "loading it UNVERIFIED" in caplog.text
    # Allowed, a file that differs from the artifact's own manifest is still refused: damage, if not forgery.
    folder = model_folder(mlflow_server, workspace, "1")
    before, after = flip_one_byte(folder / "model.skops")
    with pytest.raises(IntegrityError, match=rf"file model.skops .*{after}, but sha256 {before}"):
        allowed.load_model(source, workspace)
    (folder / MANIFEST).unlink()  # saved before checksums were recorded: the variable allows it as well
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")
    flip_one_byte(folder / "model.skops")
    assert hasattr(mlflow_server.load_model(source, workspace), "predict_proba")


def test_a_remote_load_leaves_no_copy_of_the_model_behind(first, mlflow_server, workspace, tmp_path, monkeypatch,
                                                          churn_features):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    remote = f"runs:/{first.trained.run_id}/model"  # downloaded, and checked against the run's tag
    pyfunc = mlflow_server.load_model(remote, workspace, flavor="pyfunc")
    assert list(scratch.iterdir()) == []
    rows = read_frame(first.features.dataset)[churn_features.feature_columns].head(5)
    assert len(pyfunc.predict(rows)) == 5  # loaded whole: nothing was read from the removed copy
    flip_one_byte(model_folder(mlflow_server, workspace, "1") / "model.skops")
    with pytest.raises(IntegrityError, match="file model.skops"):
        mlflow_server.load_model(remote, workspace)
    assert list(scratch.iterdir()) == []


def test_evaluate_checks_the_challenger_it_just_trained(churn_source, churn_features, fast_trainer, mlflow_server,
                                                        workspace, window0):
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    folder = Path(cycle.trained.model_source.removeprefix("file://"))
    flip_one_byte(folder / "MLmodel")
    with pytest.raises(IntegrityError, match=rf"challenger of run {cycle.trained.run_id}: file MLmodel"):
        evaluate_models(cycle.trained, cycle.features, mlflow_server=mlflow_server, workspace=workspace,
                        bootstrap_samples=0)
