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

from prefect_mlops.errors import ConfigError, IntegrityError, RegistryError, disk_full_error, shorten
from prefect_mlops.log import run_logger
from prefect_mlops.refs import reject_unknown_keys
from prefect_mlops.workspace import Workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRACKING_ENV = "MLFLOW_TRACKING_URI"  # read at call time, so a worker image can set it once
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
        """Send this Block's credentials with every MLflow request to `address`'s server, and only there."""
        header = self._auth_header().get("Authorization")
        if header is not None and address.startswith(("http://", "https://")):
            _request_auth.add(address, header)
        elif header is None:  # no credentials in this block: MLflow's own (environment, ~/.mlflow) apply
            _request_auth.headers.pop(_request_auth.origin(address), None)

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
        model's manifest; when not given, it is read from the registered versions of `source`. A
        mismatch raises `IntegrityError` naming the version, the file and both hashes. A version
        saved before checksums were recorded loads with a warning.
        """
        import mlflow.artifacts
        import mlflow.pyfunc
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException

        label = what or "model"
        try:
            local = source.removeprefix("file://") if source.startswith(("file://", "/")) else None
            if local is None:
                self._authorize(self.uri(workspace))  # the download goes through the tracking server too
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.uri(workspace))
            if not os.path.exists(local):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", local)
            self._verify(source, local, label, sha256, workspace)  # before the loader unpickles anything
            loader = mlflow.sklearn.load_model if flavor == "sklearn" else mlflow.pyfunc.load_model
            return loader(local)
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

    def _verify(self, source: str, local: str, label: str, sha256: str | None, workspace: Workspace | None) -> None:
        """Raise `IntegrityError` unless the files at `local` are those recorded for `source`."""
        from prefect_mlops.integrity import DIGEST_TAG, verify_folder

        if sha256 is None:
            versions = self.client(workspace).search_model_versions("source_path = '{}'".format(
                source.replace("'", "\\'")))
            recorded = {v.tags[DIGEST_TAG] for v in versions if v.tags.get(DIGEST_TAG)}
            if len(recorded) > 1:  # one source registered twice holds the same files: the tags must agree
                raise IntegrityError(f"{label}: the versions registered from {source} record different checksums "
                                     f"({sorted(recorded)}); the registry was changed. The model was not loaded")
            if not recorded:
                names = ", ".join(f"{v.name!r} v{v.version}" for v in versions) or "an unregistered model"
                run_logger().warning("%s (%s at %s) has no recorded checksums (saved before they were recorded); "
                                     "loading it unverified. Retrain to record them", label, names, source)
                return
            sha256 = recorded.pop()
            if label == "model" and versions:
                label = f"model {versions[0].name!r} v{versions[0].version}"
        verify_folder(local, sha256, what=label if label != "model" else f"model at {source}")


class _RequestAuth:
    """MLflow request auth that adds a Block's header to requests for its server only.

    MLflow takes credentials from process-wide environment variables (MLFLOW_TRACKING_PASSWORD...),
    which every thread and child process would then share and show. Instead a request auth
    provider (MLflow's plugin hook, chosen by the non-secret MLFLOW_TRACKING_AUTH) looks up the
    header by the request's server; other servers get none.
    """

    NAME = "prefect-mlops"

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.installed = False

    @staticmethod
    def origin(url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def add(self, address: str, header: str) -> None:
        self.headers[self.origin(address)] = header
        if self.installed:
            return
        chosen = os.environ.get("MLFLOW_TRACKING_AUTH")
        if chosen and chosen != self.NAME:
            raise ConfigError(f"MLFLOW_TRACKING_AUTH is {chosen!r}, another MLflow auth plugin; unset it to use the "
                              "MLflow Server block's credentials, or leave them empty in the block")
        import requests.auth
        from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
        from mlflow.tracking.request_auth.registry import _request_auth_provider_registry

        owner = self

        class Auth(requests.auth.AuthBase):
            def __call__(self, request: Any) -> Any:
                header = owner.headers.get(owner.origin(request.url))
                if header is not None:
                    request.headers["Authorization"] = header
                return request

        class Provider(RequestAuthProvider):
            def get_name(self) -> str:
                return owner.NAME

            def get_auth(self) -> Any:
                return Auth()

        _request_auth_provider_registry.register(Provider)
        os.environ["MLFLOW_TRACKING_AUTH"] = self.NAME  # the plugin's name, not a secret
        self.installed = True


_request_auth = _RequestAuth()


def _not_found(exc: BaseException) -> bool:
    """Whether a load failed because the model's files are not there (not because they are bad)."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return True
    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or any(
        part in text for part in ("no such file", "not found", "does not exist", "could not find", "nosuchkey"))
