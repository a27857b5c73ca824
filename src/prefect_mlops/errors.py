"""Errors raised by prefect-mlops.

Every message names the dataset, column, field or URI at fault, what was expected,
and what to do next. A failed quality gate is a verdict, not an error. A message is cut to
`MAX_MESSAGE_BYTES`, however large the values it quotes; `shorten` and `brief` cut text and values
for messages (here, the lowest layer, so that every module may use them).
"""

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
    """The data could not be read from its source."""


class DataValidationError(MlopsError):
    """The data failed its expectation suite."""


class FeatureError(MlopsError):
    """The data does not fit the declared feature spec."""


class TrainingError(MlopsError):
    """The trainer could not be built or failed while fitting."""


class RegistryError(MlopsError):
    """The MLflow tracking server or model registry refused or could not be reached."""


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
