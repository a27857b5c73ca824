"""The backtest: what would a retrain policy have done over past, time-ordered data?

`prefect-mlops backtest` (or `make backtest`) replays streams period by period through the real
flows on the embedded default, and compares the policy with a static model and an oracle.
Needs the `backtest` extra (river) and ISLP's data files (`pip install --no-deps islp==0.6.0`).

Example:
    ```python
    from prefect_mlops.backtest import STREAMS, gain_recovered
    assert "bikeshare" in STREAMS
    assert gain_recovered(0.9, 0.8, 0.9, lower_better=False) == 1.0
    ```
"""

from __future__ import annotations

from typing import Any

__all__ = ["STREAMS", "Stream", "StreamResult", "baselines", "gain_recovered", "load_stream", "replay_policy"]
_HOME = {"STREAMS": "streams", "Stream": "streams", "load_stream": "streams", "StreamResult": "replay",
         "baselines": "replay", "gain_recovered": "replay", "replay_policy": "replay"}


def __getattr__(name: str) -> Any:
    # Lazy: the CLI builds its parser from `backtest.run` without importing pandas, river or Prefect.
    if name not in _HOME:
        raise AttributeError(f"module 'prefect_mlops.backtest' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"prefect_mlops.backtest.{_HOME[name]}"), name)
