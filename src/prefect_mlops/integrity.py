"""Model integrity: a SHA-256 of every file of a model, recorded at save time and checked before any load.

Loading a model can run code (a pickle always does), so the files are checked first, before
MLflow's loader opens any of them. The per-file manifest is written into the model folder
(`MANIFEST`); the digest of the manifest itself goes into the registry (a run tag and a model
version tag, `DIGEST_TAG`), where the artifact store cannot change it. A file that differs, is
missing or was added, or a manifest that differs from the recorded digest, raises `IntegrityError`.

Example:
    ```python
    import pathlib, tempfile
    import pytest
    from prefect_mlops.errors import IntegrityError
    from prefect_mlops.integrity import verify_folder, write_manifest
    folder = pathlib.Path(tempfile.mkdtemp())
    (folder / "model.skops").write_bytes(b"weights")
    digest = write_manifest(folder)
    verify_folder(folder, digest, what="churn v1")
    (folder / "model.skops").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match="model.skops"):
        verify_folder(folder, digest, what="churn v1")
    ```
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefect_mlops.errors import IntegrityError

MANIFEST = "prefect_mlops.sha256.json"
"""The per-file manifest, a file inside the model folder (not listed in itself)."""

DIGEST_TAG = "prefect_mlops.sha256"
"""Run and model-version tag: SHA-256 of the manifest file, so the manifest cannot be swapped either."""

_CHUNK = 1 << 20

MLFLOW_META = "registered_model_meta"
"""The file MLflow writes into a model's folder on loading it by `models:/name/version` from a local store
(`mlflow models serve -m models:/churn/3`): YAML holding the model's name and version. MLflow only
writes it (no loader of MLflow or of this package reads it), so it is data and never code: a change to
it cannot change what a load runs or predicts. It is ignored when it is extra at the model's root, and
only there: listed in the manifest it is checked like any file, and a file of that name deeper down, or a
folder of that name, is still refused."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digests(folder: str | os.PathLike[str]) -> dict[str, str]:
    """`{relative path: SHA-256}` of every file under `folder` except the manifest, sorted by path."""
    root = Path(folder)
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            relative = path.relative_to(root).as_posix()
            if relative != MANIFEST:
                found[relative] = file_sha256(path)
    return found


def manifest_bytes(files: dict[str, str]) -> bytes:
    """The canonical manifest text: sorted keys, so equal files give an equal digest."""
    return json.dumps({"algorithm": "sha256", "files": dict(sorted(files.items()))}, indent=1,
                      sort_keys=True).encode()


def write_manifest(folder: str | os.PathLike[str]) -> str:
    """Hash every file of a saved model, write `MANIFEST` into the folder; returns the manifest's digest."""
    data = manifest_bytes(folder_digests(folder))
    Path(folder, MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The `{file: SHA-256}` map written by `write_manifest`."""
    return dict(json.loads(Path(folder, MANIFEST).read_bytes())["files"])


def verify_folder(folder: str | os.PathLike[str], digest: str, *, what: str) -> dict[str, str]:
    """Raise `IntegrityError` unless every file of `folder` matches the manifest whose SHA-256 is `digest`.

    `what` names the model in the message (e.g. "model 'churn' v3 (@champion)"); a mismatch names
    the file and both hashes. Returns the checked `{file: SHA-256}`.
    """
    root = Path(folder)
    advice = ("The model was not loaded: nothing was scored or promoted. Restore the file from a backup, roll "
              "back to another version, or train and register a new one")
    try:
        data = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{what}: the checksum manifest {MANIFEST} is missing from {root}, but the registry "
                             f"records one (sha256 {digest}); the artifact was replaced. {advice}") from None
    found = hashlib.sha256(data).hexdigest()
    if found != digest:
        raise IntegrityError(f"{what}: file {MANIFEST} in {root} has sha256 {found}, but the registry recorded "
                             f"{digest}; the checksum manifest was changed. {advice}")
    expected = dict(json.loads(data)["files"])
    actual = folder_digests(root)
    if MLFLOW_META not in expected and (root / MLFLOW_META).is_file() and not (root / MLFLOW_META).is_symlink():
        del actual[MLFLOW_META]  # written by MLflow after registration; data, never code (see MLFLOW_META)
    for name, wanted in expected.items():
        if name not in actual:
            raise IntegrityError(f"{what}: file {name} is missing from {root} (recorded sha256 {wanted}). {advice}")
        if actual[name] != wanted:
            raise IntegrityError(f"{what}: file {name} in {root} has sha256 {actual[name]}, but sha256 {wanted} "
                                 f"was recorded at registration; the file was changed. {advice}")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise IntegrityError(f"{what}: files {extra} in {root} were not there at registration (sha256 "
                             f"{actual[extra[0]]} for {extra[0]}, none recorded); the artifact was changed. {advice}")
    return actual
