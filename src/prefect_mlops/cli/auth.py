"""Basic auth on the Prefect server the CLI starts, and a clear answer when an API refuses the credentials.

`prefect-mlops up --auth` reads the `user:password` string from $PREFECT_MLOPS_AUTH_STRING, else
from `--auth-file`, else from `<home>/prefect/auth-string`; with none of them it generates one
into that file (mode 0600) and says where, never printing the password. The server gets it as
PREFECT_SERVER_API_AUTH_STRING and its workers and the CLI's own API calls as
PREFECT_API_AUTH_STRING, all through the environment, never a command line.

Example:
    ```python
    import pytest
    from prefect_mlops.cli.auth import check_auth_string
    from prefect_mlops.errors import ConfigError
    assert check_auth_string("ops:pa55", "test") == "ops:pa55"
    with pytest.raises(ConfigError, match="expected 'user:password'"):
        check_auth_string("no-colon", "test")
    ```
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
import urllib.error
import urllib.request
from pathlib import Path

from prefect_mlops.errors import ConfigError

AUTH_ENV = "PREFECT_MLOPS_AUTH_STRING"
AUTH_FILE = "auth-string"
GENERATED_USER = "prefect-mlops"


def check_auth_string(text: str, where: str) -> str:
    """`text` if it is `user:password` with both parts non-empty; else a `ConfigError` naming `where`, not the text."""
    user, colon, password = text.partition(":")
    if not colon or not user or not password or any(ch.isspace() for ch in text):
        raise ConfigError(f"the auth string from {where}: expected 'user:password' (no spaces, both parts "
                          "non-empty); fix it there")
    return text


def resolve_auth(home: Path, *, auth: bool, auth_file: Path | None) -> str | None:
    """The server's `user:password` for `up --auth` / `demo-server --auth`, or None without either option."""
    if not auth and auth_file is None:
        return None
    text = os.environ.get(AUTH_ENV)
    if text:
        return check_auth_string(text.strip(), f"${AUTH_ENV}")
    path = auth_file or home / "prefect" / AUTH_FILE
    if path.exists():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            mode = stat.filemode(path.stat().st_mode)
            raise ConfigError(f"auth file {path} can be read by other users (mode {mode}); run `chmod 600 {path}` "
                              "and retry")
        return check_auth_string(path.read_text().strip(), str(path))
    if auth_file is not None:
        raise ConfigError(f"--auth-file {path} does not exist; write 'user:password' into it (chmod 600), or leave "
                          f"the option out to have one generated")
    text = f"{GENERATED_USER}:{secrets.token_urlsafe(24)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    print(f"generated a Prefect API auth string for user {GENERATED_USER!r} in {path} (mode 0600); workers need it "
          "as PREFECT_API_AUTH_STRING, and the UI asks for it at its login", flush=True)
    return text


def check_credentials(api_url: str, auth_string: str | None, *, timeout: float = 10) -> None:
    """Raise `ConfigError` when the Prefect API at `api_url` refuses these credentials (HTTP 401).

    The message names the API and the user, never the password.
    """
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")  # noqa: S310 (an http(s) API URL)
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            reply.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return  # not a credentials problem: the call that follows reports it
        if not auth_string:
            raise ConfigError(f"the Prefect API at {api_url} needs basic auth (HTTP 401 without credentials); set "
                              "PREFECT_API_AUTH_STRING to the server's 'user:password'") from None
        user = auth_string.partition(":")[0]
        raise ConfigError(f"the Prefect API at {api_url} refused the credentials of user {user!r} (HTTP 401): the "
                          "password is wrong or the user differs from the server's PREFECT_SERVER_API_AUTH_STRING; "
                          "fix PREFECT_API_AUTH_STRING") from None
    except (urllib.error.URLError, OSError):
        return  # unreachable: the health check and the call that follows say so


def check_api_credentials() -> None:
    """`check_credentials` for the API this process's settings point at (PREFECT_API_URL, PREFECT_API_AUTH_STRING)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    secret = PREFECT_API_AUTH_STRING.value()
    if url:
        check_credentials(url, getattr(secret, "get_secret_value", lambda: secret)())
