"""prefect-mlops: continuous training as Prefect tasks and flows.

Importing this package is cheap: the lifecycle lives in `prefect_mlops.tasks`,
`prefect_mlops.flows` and `prefect_mlops.blocks`, and heavy libraries (MLflow,
Great Expectations, Evidently, torch) are imported only inside the stage that uses them.

Example:
    ```python
    import prefect_mlops
    print(prefect_mlops.__version__)
    ```
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prefect-mlops")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
