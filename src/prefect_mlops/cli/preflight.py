"""Checks a command makes before any work: is there a Prefect API, and does it answer."""

from __future__ import annotations

HOW_TO_POINT = ("point at your server with `export PREFECT_API_URL=http://127.0.0.1:4200/api`, "
                "or start one with `prefect-mlops up`")


def prefect_api(command: str, *, required: bool) -> str | None:
    """The Prefect API URL `command` will talk to, after checking that it answers.

    With `required`, an unset PREFECT_API_URL is refused: the work would go to a temporary
    embedded server that stops with this process, and be lost. Otherwise None means "the embedded
    API". A URL that does not answer ends the command with one line naming it.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        if required:
            raise SystemExit(f"prefect-mlops {command}: PREFECT_API_URL is not set, so everything would go to a "
                             f"temporary Prefect server that stops when this command ends; {HOW_TO_POINT}")
        return None
    problem = _unhealthy(url)
    if problem:
        raise SystemExit(f"prefect-mlops {command}: cannot reach the Prefect API at {url} ({problem}); start the "
                         f"server (`prefect-mlops up` or `prefect server start`) or fix PREFECT_API_URL")
    return url


def _unhealthy(url: str) -> str | None:
    """Why the API at `url` fails its health check (through Prefect's client: auth and TLS as set), or None."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True, httpx_settings={"timeout": 10}) as client:
            error = client.api_healthcheck()
    except Exception as exc:  # the client checks the server's version on entry and may fail there
        error = exc
    if error is None:
        return None
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
