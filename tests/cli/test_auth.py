"""Where `up --auth` takes the Prefect auth string from, and how a refused one is said (no server needed).

The live server with basic auth is in tests/system/test_security.py.
"""

from __future__ import annotations

import stat

import pytest

from prefect_mlops.cli.auth import AUTH_ENV, check_credentials, resolve_auth
from prefect_mlops.errors import ConfigError
from tests.http_stub import stub_server


def test_without_the_option_there_is_no_auth(tmp_path, monkeypatch):
    monkeypatch.setenv(AUTH_ENV, "ops:from-env")
    assert resolve_auth(tmp_path, auth=False, auth_file=None) is None


def test_the_environment_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv(AUTH_ENV, "ops:from-env")
    assert resolve_auth(tmp_path, auth=True, auth_file=None) == "ops:from-env"


def test_a_generated_string_goes_to_a_private_file_and_is_never_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    made = resolve_auth(tmp_path, auth=True, auth_file=None)
    path = tmp_path / "prefect" / "auth-string"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == made
    user, password = made.split(":", 1)
    assert user == "prefect-mlops" and len(password) >= 32
    said = capsys.readouterr().out
    assert str(path) in said and password not in said
    assert resolve_auth(tmp_path, auth=True, auth_file=None) == made  # the next start reuses it


def test_a_file_others_can_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    path = tmp_path / "auth"
    path.write_text("ops:pa55word\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"auth file {path} can be read by other users.*chmod 600"):
        resolve_auth(tmp_path, auth=False, auth_file=path)
    path.chmod(0o600)
    assert resolve_auth(tmp_path, auth=False, auth_file=path) == "ops:pa55word"


def test_a_malformed_string_is_named_by_where_it_came_from_not_by_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv(AUTH_ENV, "only-a-password-s3cret")
    with pytest.raises(ConfigError, match=rf"\${AUTH_ENV}: expected 'user:password'") as caught:
        resolve_auth(tmp_path, auth=True, auth_file=None)
    assert "s3cret" not in str(caught.value)


@pytest.fixture
def refusing_api():
    with stub_server(lambda method, path: (401, {}, b"")) as url:
        yield f"{url}/api"


def test_a_refused_password_names_the_api_and_the_user_only(refusing_api):
    with pytest.raises(ConfigError, match=rf"the Prefect API at {refusing_api} refused the credentials of user "
                                          r"'ops' \(HTTP 401\)") as caught:
        check_credentials(refusing_api, "ops:n0t-the-password")
    assert "n0t-the-password" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"needs basic auth \(HTTP 401 without credentials\); set "
                                          "PREFECT_API_AUTH_STRING"):
        check_credentials(refusing_api, None)
