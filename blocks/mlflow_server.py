"""The MLflow tracking server and model registry that runs and models go to."""

from __future__ import annotations

import base64
import errno
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from prefect_mlops import model_io
from prefect_mlops.errors import ConfigError, IntegrityError, RegistryError, disk_full_error, shorten
from prefect_mlops.log import run_logger
from prefect_mlops.refs import reject_unknown_keys
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRACKING_ENV = "MLFLOW_TRACKING_URI"  # read at call time, so a worker image can set it once
ALLOW_UNVERIFIED_ENV = "PREFECT_MLOPS_ALLOW_UNVERIFIED_MODELS"  # "1": load models without a checksum (warned)
_DOCS = "https://github.com/prefect-mlops/prefect-mlops#blocks"


class MlflowServer(Block):
    """Where training runs are tracked and models registered.

    Leave `tracking_uri` empty to use the embedded store: SQLite inside the run workspace.

    Example:
        ```python
        from prefect_mlops.blocks import MlflowServer
        saved = MlflowServer.load("BLOCK_NAME")
        server = MlflowServer(tracking_uri="sqlite:////tmp/mlflow-example.db")
        assert server.uri() == "sqlite:////tmp/mlflow-example.db"
        ```
    """

    _block_type_name = "MLflow Server"
    _block_type_slug = "prefect-mlops-mlflow-server"
    _logo_url = "https://images.ctfassets.net/gm98wzqotmnx/4Jpbhw56J2PijpCTsDlv2D/3a3d9d5a8b4a6c69d96f5c6b7c5a87a1/mlflow.png"
    _documentation_url = _DOCS
    _description = "Tracking server and model registry for prefect-mlops runs and models."

    tracking_uri: str | None = Field(
        default=None,
        description="Tracking server address, e.g. http://mlflow:5000 or sqlite:///mlflow.db. "
        "Empty: $MLFLOW_TRACKING_URI, else SQLite inside the run workspace.",
    )
    registry_uri: str | None = Field(
        default=None, description="Model registry address; the tracking URI when empty."
    )
    experiment: str = Field(default="prefect-mlops", description="Experiment that training runs go to.")
    username: str | None = Field(
        default=None, description="User for a tracking server with basic auth (`mlflow server --app-name "
        "basic-auth`); its password goes in `password`."
    )
    password: SecretStr | None = Field(default=None, description="Password of `username` (basic auth).")
    token: SecretStr | None = Field(
        default=None, description="Bearer token for a tracking server that asks for one (instead of a password)."
    )
    artifact_location: str | None = Field(
        default=None,
        description="Where a new experiment stores model files (e.g. s3://bucket/mlflow). "
        "Empty: the server's default, or the workspace's mlartifacts folder for a local store.",
    )
    allow_unverified_models: bool = Field(
        default=False,
        description="Load a model whose version and run record no checksum (tag prefect_mlops.sha256), with a "
        "warning, instead of refusing it. Loading a model can run code from its files: allow this only for "
        "models saved before checksums were recorded, whose artifact store you trust. Also "
        "$PREFECT_MLOPS_ALLOW_UNVERIFIED_MODELS=1.",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Prefect's own keys (block_type_slug, _block_document_id...) travel with a saved Block.
        return reject_unknown_keys(cls, data, also=("block_type_slug",))

    def uri(self, workspace: Workspace | None = None) -> str:
        """The tracking URI in force: this Block's, or the workspace's embedded store."""
        return self.tracking_uri or os.environ.get(TRACKING_ENV) or (workspace or Workspace()).mlflow_uri

    def client(self, workspace: Workspace | None = None) -> MlflowClient:
        """A client bound to this server; leaves MLflow's process-wide tracking URI alone."""
        from mlflow import MlflowClient

        uri = self.uri(workspace)
        registry = self.registry_uri or uri
        for address in {uri, registry}:
            self._authorize(address)
        return MlflowClient(tracking_uri=uri, registry_uri=registry)

    def _authorize(self, address: str) -> None:
        """Send this Block's credentials with every MLflow request to `address`'s server, and only there.

        Without credentials in this block, MLflow's own (environment, ~/.mlflow) apply there.
        """
        from prefect_mlops.mlflow_auth import set_header

        header = self._auth_header().get("Authorization")
        if header is None or address.startswith(("http://", "https://")):
            set_header(address, header)

    def _auth_header(self) -> dict[str, str]:
        """The Authorization header of this Block's credentials; empty without any."""
        if bool(self.username) != (self.password is not None):
            raise ConfigError("MLflow Server block: basic auth needs both username and password; set the missing "
                              "one (or neither, for a server without auth)")
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        if self.username and self.password is not None:
            pair = f"{self.username}:{self.password.get_secret_value()}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        return {}

    def check_reachable(self, workspace: Workspace | None = None, timeout: float = 5.0) -> None:
        """Fail fast, naming the address, when an HTTP tracking server does not answer.

        MLflow's own client retries for minutes before giving up; this answers in seconds.
        """
        uri = self.uri(workspace)
        if not uri.startswith(("http://", "https://")):
            return
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:  # noqa: S310
                reply.read()
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(
                f"MLflow server {uri} is unreachable ({exc}); start it, or fix the MLflow Server "
                "block's tracking_uri. Nothing was registered or promoted"
            ) from exc
        # /health answers anyone: ask something that needs the credentials, so a refused one is said here.
        probe = urllib.request.Request(  # noqa: S310 (uri is http(s), checked above)
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", headers=self._auth_header())
        try:
            with urllib.request.urlopen(probe, timeout=timeout) as reply:  # noqa: S310
                reply.read()
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                return  # another problem: the call that follows reports it with MLflow's words
            if self.username and exc.code == 401:
                said = f"refused the credentials of user {self.username!r} (HTTP 401): the password is wrong"
            elif exc.code == 401:
                said = "needs credentials (HTTP 401); set the MLflow Server block's username and password (or token)"
            else:
                said = f"refused access to {self.username or 'this token'!r} (HTTP 403): grant it permissions"
            raise RegistryError(f"MLflow server {uri} {said}. Nothing was registered or promoted") from None
        except (urllib.error.URLError, OSError):
            return

    def experiment_id(self, workspace: Workspace | None = None) -> str:
        """The id of this Block's experiment, created on first use."""
        client = self.client(workspace)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifact_location
        if location is None and self.uri(workspace).startswith(("sqlite:", "file:")):
            # A local store keeps model files beside its database, not in ./mlruns of whatever directory.
            location = (workspace or Workspace()).artifact_root
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:
            # Another process created it between our read and our create.
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def load_model(self, source: str, workspace: Workspace | None = None, *, flavor: str = "sklearn",
                   what: str | None = None, sha256: str | None = None) -> object:
        """Load a logged model from its artifact location, without touching MLflow's global URIs.

        `flavor="sklearn"` gives the fitted pipeline (with `predict_proba`); `"pyfunc"` the
        generic model that serving uses. `what` names the model in errors, for example
        `"churn v3 (@champion)"`: missing artifacts raise `RegistryError` naming it and `source`;
        a full disk while downloading raises `StorageError` naming the path.

        Every file is checked against the checksums recorded when the model was saved before
        MLflow's loader opens any of them (`prefect_mlops.integrity`): `sha256` is the digest of the
        model's manifest (a caller holding the version's tags passes its `prefect_mlops.sha256`);
        when not given, it is read from the registered versions of `source`, else from the tag of
        the run that logged it. A mismatch raises `IntegrityError` naming the version, the file and
        both hashes. A model with no recorded digest at all is refused too, unless
        `allow_unverified_models` (or $PREFECT_MLOPS_ALLOW_UNVERIFIED_MODELS=1) lets it load with a
        warning. A remote model is downloaded into a temporary folder, removed once it is loaded.
        """
        import tempfile

        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        label = what or "model"
        try:
            if source.startswith(("file://", "/")):
                return self._load_verified(source, source.removeprefix("file://"), label, sha256, flavor, workspace)
            self._authorize(self.uri(workspace))  # the download goes through the tracking server too
            # The sklearn and pyfunc loaders read every file before they return (the sklearn flavor
            # deserializes its one model file; pyfunc wraps that and the MLmodel it read), so the copy
            # is not needed after the load; left behind, every load of a remote model would keep one.
            with tempfile.TemporaryDirectory(prefix="prefect-mlops-model-") as folder:
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.uri(workspace),
                                                            dst_path=folder)
                return self._load_verified(source, local, label, sha256, flavor, workspace)
        except (OSError, MlflowException) as exc:
            full = disk_full_error(exc, getattr(exc, "filename", None) or source, stage=f"loading {label}",
                                   advice="free space there (or set TMPDIR to a folder with room), then retry",
                                   left="the model was not loaded")
            if full is not None:
                raise full from exc
            if _not_found(exc):
                raise RegistryError(
                    f"{label}: model artifacts not found at {source} ({shorten(str(exc), 500)}); the files were "
                    "deleted or the artifact store moved. Restore them, roll back to a version whose files exist, "
                    "or train and register a new version") from exc
            raise RegistryError(f"{label}: the model at {source} could not be loaded ({shorten(str(exc), 1000)}); "
                                "check that its artifacts exist and are readable") from exc

    def _load_verified(self, source: str, local: str, label: str, sha256: str | None, flavor: str,
                       workspace: Workspace | None) -> object:
        if not os.path.exists(local):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", local)
        self._verify(source, local, label, sha256, workspace)  # before the loader unpickles anything
        if _saved_with_skops(local):  # read where skops is imported: the run's model-files process, if any
            return model_io.run(_load_local, os.path.abspath(local), flavor)  # the copy's cwd is as it was
        return _load_local(local, flavor)

    def _verify(self, source: str, local: str, label: str, sha256: str | None, workspace: Workspace | None) -> None:
        """Raise `IntegrityError` unless the files at `local` are those recorded for `source`."""
        from prefect_mlops.integrity import verify_folder

        if sha256 is None:
            sha256, label = self._recorded_digest(source, local, label, workspace)
            if sha256 is None:
                return  # allowed to load unverified; warned
        verify_folder(local, sha256, what=label if label != "model" else f"model at {source}")

    def _recorded_digest(self, source: str, local: str, label: str,
                         workspace: Workspace | None) -> tuple[str | None, str]:
        """The digest the registry records for `source` (its versions' tag, else its run's), and the label.

        The manifest inside the artifact cannot vouch for itself (whoever swaps a file can rewrite
        it too): with no tag anywhere the model is refused, or loads with a warning when allowed.
        """
        import hashlib

        from mlflow.exceptions import MlflowException

        from prefect_mlops.integrity import DIGEST_TAG, MANIFEST, verify_folder

        client = self.client(workspace)
        versions = client.search_model_versions("source_path = '{}'".format(source.replace("'", "\\'")))
        if label == "model" and versions:
            label = f"model {versions[0].name!r} v{versions[0].version}"
        recorded = {v.tags[DIGEST_TAG] for v in versions if v.tags.get(DIGEST_TAG)}
        if len(recorded) > 1:  # one source registered twice holds the same files: the tags must agree
            raise IntegrityError(f"{label}: the versions registered from {source} record different checksums "
                                 f"({sorted(recorded)}); the registry was changed. The model was not loaded")
        if recorded:
            return recorded.pop(), label
        run_id, path = _run_artifact(source)
        run_ids = sorted({v.run_id for v in versions if v.run_id} or ({run_id} if run_id else set()))
        key = DIGEST_TAG if path in (None, "model") else f"{DIGEST_TAG}.{path}"
        for run in run_ids:
            try:
                found = client.get_run(run).data.tags.get(key)
            except MlflowException as exc:  # the run is gone: no tag of it can vouch for anything
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                found = None
            if found:
                return found, label
        names = ", ".join(f"{v.name!r} v{v.version}" for v in versions) or "not a registered version"
        where = (f"neither its model version nor its run ({', '.join(run_ids)}) carries tag {key}" if run_ids
                 else f"no model version or run records tag {key} for it")
        if not self.unverified_allowed():
            raise IntegrityError(
                f"{label} ({names}, at {source}) has no recorded checksum: {where}, and the artifact's own "
                f"{MANIFEST} cannot vouch for itself. It was not loaded, because loading a model can run code "
                "from its files and these cannot be checked. Either it was saved before checksums were recorded, "
                "or the tag was removed: train and register a new version (or roll back to one that has the "
                f"tag). To load it anyway, if you trust its files, set allow_unverified_models on the MLflow "
                f"Server block (or {ALLOW_UNVERIFIED_ENV}=1)")
        manifest = os.path.join(local, MANIFEST)
        if os.path.exists(manifest):  # catches a damaged file, not a swapped one: the manifest came with them
            with open(manifest, "rb") as handle:
                verify_folder(local, hashlib.sha256(handle.read()).hexdigest(), what=label)
        run_logger().warning("%s (%s, at %s) has no recorded checksum (%s); loading it UNVERIFIED because "
                             "unverified models are allowed (%s). Train and register a new version to record one",
                             label, names, source, where, "checked against its own manifest only" if
                             os.path.exists(manifest) else "no manifest either")
        return None, label

    def unverified_allowed(self) -> bool:
        """Whether a model without a recorded checksum may load (with a warning): the field or the variable."""
        return self.allow_unverified_models or os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in (
            "1", "true", "yes")


def _load_local(local: str, flavor: str) -> object:
    """The model in the folder `local`, as the scikit-learn pipeline or as pyfunc."""
    import mlflow.pyfunc
    import mlflow.sklearn

    return (mlflow.sklearn.load_model if flavor == "sklearn" else mlflow.pyfunc.load_model)(local)


def _saved_with_skops(local: str) -> bool:
    """Whether the model in `local` was saved in the skops format (its MLmodel says so)."""
    import yaml

    try:
        with open(os.path.join(local, "MLmodel"), encoding="utf-8") as file:
            meta = yaml.safe_load(file) or {}
        return (meta.get("flavors") or {}).get("sklearn", {}).get("serialization_format") == "skops"
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # MLflow's own loader names what is wrong
        return False


def _run_artifact(source: str) -> tuple[str | None, str | None]:
    """The run id and artifact path in a model's source URI (`runs:/<id>/<path>` or `.../<id>/artifacts/<path>`).

    Example:
        ```python
        from prefect_mlops.blocks.mlflow_server import _run_artifact
        run = "0123456789abcdef" * 2
        assert _run_artifact(f"file:///m/1/{run}/artifacts/refit-model") == (run, "refit-model")
        assert _run_artifact(f"runs:/{run}/model") == (run, "model")
        assert _run_artifact("file:///copies/of-v1") == (None, None)
        ```
    """
    import re

    found = re.match(r"runs:/([0-9a-f]{32})/(.+)$", source) or re.search(r"/([0-9a-f]{32})/artifacts/(.+)$", source)
    return (found.group(1), found.group(2).strip("/")) if found else (None, None)


def _not_found(exc: BaseException) -> bool:
    """Whether a load failed because the model's files are not there (not because they are bad)."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return True
    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or any(
        part in text for part in ("no such file", "not found", "does not exist", "could not find", "nosuchkey"))
