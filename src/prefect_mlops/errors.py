"""Errors raised by prefect-mlops.

Every message names the dataset, column, field or URI at fault, what was expected,
and what to do next. A failed quality gate is a verdict, not an error. A message is cut to
`MAX_MESSAGE_BYTES`, however large the values it quotes; `shorten` and `brief` cut text and values
for messages (here, the lowest layer, so that every module may use them).
"""

import errno
import os

MAX_MESSAGE_BYTES = 8000  # under the 10 kB a line may take, leaving room for Prefect's prefixes
MAX_VALUE_CHARS = 200


def shorten(text: object, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`text` as a string of at most `limit` UTF-8 bytes, cut in the middle with a note of how much.

    Example:
        ```python
        from prefect_mlops.errors import shorten
        assert shorten("short") == "short"
        cut = shorten("x" * 1_000_000, limit=100)
        assert len(cut.encode()) <= 100 and "cut" in cut
        ```
    """
    text = text if isinstance(text, str) else str(text)
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    note = f" ...[{len(data):,} bytes, cut]... "
    room = max(limit - len(note.encode()), 0)
    head = data[: room * 3 // 4].decode("utf-8", "ignore")
    tail = data[len(data) - (room - room * 3 // 4):].decode("utf-8", "ignore") if room else ""
    return f"{head}{note}{tail}"


def brief(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """`repr(value)` for a message, cut to about `limit` characters.

    Example:
        ```python
        from prefect_mlops.errors import brief
        assert brief("plan") == "'plan'"
        assert len(brief("v" * 10_000)) < 300
        ```
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}...[{len(text):,} characters, cut]"


class MlopsError(Exception):
    """Base class for every error raised by prefect-mlops."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (shorten(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(MlopsError, ValueError):
    """A parameter, policy or Block holds a value that cannot work."""


class DataSourceError(MlopsError):
    """The data could not be read from its source, or written to an S3 store (see `DataSource.write_bytes`)."""


class DataValidationError(MlopsError):
    """The data failed its expectation suite."""


class FeatureError(MlopsError):
    """The data does not fit the declared feature spec."""


class TrainingError(MlopsError):
    """The trainer could not be built or failed while fitting."""


class RegistryError(MlopsError):
    """The MLflow tracking server or model registry refused or could not be reached."""


class IntegrityError(RegistryError):
    """A model's files differ from the checksums recorded when it was saved: it was not loaded."""


class GateNotPassedError(MlopsError):
    """A stage that needs a passed gate verdict was given one that did not pass."""


class DeployError(MlopsError):
    """Promotion failed; the message says where the registry's aliases were left."""


class ChampionMovedError(DeployError):
    """The champion changed after evaluate compared against it: nothing was promoted."""


class ModelBusyError(MlopsError):
    """Another run holds the model's lock for too long."""


class DriftCheckError(MlopsError):
    """The drift check could not compare the current window with the reference."""


class StorageError(MlopsError):
    """A file could not be written: the disk (or the user's quota) is full. Nothing half-written was kept."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
WORKSPACE_ADVICE = "free space there or point PREFECT_MLOPS_WORKSPACE elsewhere, then retry"
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a full disk or an exceeded quota (ENOSPC, EDQUOT), also when only its text says so.

    Example:
        ```python
        import errno
        from prefect_mlops.errors import is_disk_full
        assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
        assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
        ```
    """
    if not isinstance(exc, OSError):
        return False
    if exc.errno is not None:
        return exc.errno in DISK_FULL_ERRNOS
    # Arrow's writers raise OSError without an errno at times, the cause only in the text.
    return any(text in str(exc).lower() for text in _DISK_FULL_TEXTS)


def disk_full_hint(exc: BaseException, path: str | os.PathLike[str] | None,
                   advice: str = "free space there and retry") -> str | None:
    """A sentence naming `path` when `exc` is a full disk (ENOSPC) or quota (EDQUOT), else None.

    Example:
        ```python
        import errno
        from prefect_mlops.errors import disk_full_hint
        hint = disk_full_hint(OSError(errno.ENOSPC, "No space left on device"), "/data/x.parquet")
        assert hint == "no space left on the device holding /data/x.parquet: free space there and retry"
        assert disk_full_hint(ValueError("x"), "/data/x.parquet") is None
        ```
    """
    if not is_disk_full(exc):
        return None
    what = "disk quota exceeded on" if getattr(exc, "errno", None) == errno.EDQUOT else "no space left on"
    where = os.fspath(path) if path is not None else getattr(exc, "filename", None) or "(unknown path)"
    return f"{what} the device holding {where}: {advice}"


def disk_full_error(exc: BaseException, path: str | os.PathLike[str], *, stage: str,
                    advice: str = WORKSPACE_ADVICE, left: str | None = None) -> StorageError | None:
    """A `StorageError` naming `stage` and `path` when `exc` is a full disk, else None (raise it `from exc`).

    Example:
        ```python
        import errno
        from prefect_mlops.errors import disk_full_error
        error = disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "/ws/a.json", stage="suite")
        assert "suite: disk quota exceeded on the device holding /ws/a.json" in str(error)
        ```
    """
    hint = disk_full_hint(exc, path, advice)
    if hint is None:
        return None
    return StorageError(f"{stage}: {hint}; {left or f'nothing was written to {os.fspath(path)}'}")
