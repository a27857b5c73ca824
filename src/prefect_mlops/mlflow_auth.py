"""MLflow request auth: an `MlflowServer` Block's header goes to requests for its own server, and only there.

MLflow takes credentials from process-wide environment variables (MLFLOW_TRACKING_PASSWORD...),
which every thread and child process would then share and show. Instead this request auth
provider (MLflow's plugin hook, chosen by the non-secret `MLFLOW_TRACKING_AUTH=prefect-mlops`)
looks up the header by the request's server; other servers get none. The provider is declared
as the entry point `mlflow.request_auth_provider` / `prefect-mlops`, so a child process that
inherits the variable resolves the name too (to a provider that holds no header there: the
secrets stay in the process whose Block registered them).

This module imports neither Prefect nor MLflow at import time: MLflow loads it in any process
that uses a tracking server while the variable is set.

Example:
    ```python
    from prefect_mlops.mlflow_auth import RequestAuthProvider, origin
    assert origin("HTTP://Example.com:5000/api/2.0/x") == "http://example.com:5000"
    assert RequestAuthProvider().get_name() == "prefect-mlops"
    ```
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from prefect_mlops.errors import ConfigError

NAME = "prefect-mlops"
"""The provider's name: the value of MLFLOW_TRACKING_AUTH that selects it (not a secret)."""

ENV = "MLFLOW_TRACKING_AUTH"

_headers: dict[str, str] = {}  # server origin -> Authorization header; this process only
_lock = threading.Lock()
_registered = False


def origin(url: str) -> str:
    """`scheme://host:port` of a URL, lower-cased: the key a header is kept under."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Auth:
    """A `requests` auth hook: adds the header kept for the request's server, if any."""

    def __call__(self, request: Any) -> Any:
        header = _headers.get(origin(request.url))
        if header is not None:
            request.headers["Authorization"] = header
        return request


class RequestAuthProvider:
    """MLflow's `RequestAuthProvider` interface (`get_name`, `get_auth`), found by MLflow through the entry point."""

    def get_name(self) -> str:
        return NAME

    def get_auth(self) -> Any:
        return _Auth()


def set_header(address: str, header: str | None) -> None:
    """Send `header` with every MLflow request to `address`'s server (None: send none there).

    The first header selects this provider: MLFLOW_TRACKING_AUTH is set to its name, which a
    child process resolves through the entry point. Another auth plugin already chosen there is
    a `ConfigError`: the two cannot both apply.
    """
    global _registered
    with _lock:
        if header is None:
            _headers.pop(origin(address), None)
            return
        chosen = os.environ.get(ENV)
        if chosen and chosen != NAME:
            raise ConfigError(f"{ENV} is {chosen!r}, another MLflow auth plugin; unset it to use the MLflow Server "
                              "block's credentials, or leave them empty in the block")
        _headers[origin(address)] = header
        if not _registered:
            _register()
            _registered = True
        os.environ[ENV] = NAME


def _register() -> None:
    """Make sure MLflow's registry knows this provider (the entry point does it in an installed package)."""
    from mlflow.tracking.request_auth.registry import _request_auth_provider_registry

    if not any(provider.get_name() == NAME for provider in _request_auth_provider_registry):
        _request_auth_provider_registry.register(RequestAuthProvider)
