"""Errors raised by prefect-mlops.

Every message names the dataset, column, field or URI at fault, what was expected,
and what to do next. A failed quality gate is a verdict, not an error. A message is cut to
`prefect_mlops.log.MAX_MESSAGE_BYTES`, however large the values it quotes.
"""

from prefect_mlops.log import shorten


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
