"""Flow-run heartbeats that end with the run, for this package's flows.

Prefect 3.8 sends a flow run's heartbeats (what marks a crashed run as crashed) from a thread that
sleeps in one-second steps, and a sync flow run waits for that thread when it ends: every run of a sync
flow returns 0-1 s late, 0.5 s on average (7 % of a 100,000-row training cycle, more of a drift check).
Prefect's async engine does not wait (`join_on_exit=False`): the thread stops at its next step and
starts no heartbeat after the run (one already being sent may finish after the run returns).
`end_heartbeats_with_run` gives this package's flows, and any flow passed to it, that exit; their
heartbeats are sent as before, and every other flow in the process keeps Prefect's behaviour.

Example:
    ```python
    from prefect import flow
    from prefect_mlops.heartbeats import end_heartbeats_with_run

    @flow
    def nightly_report() -> None: ...

    end_heartbeats_with_run(nightly_report)  # this package's flows: done by `import prefect_mlops.flows`
    ```
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["end_heartbeats_with_run"]

_OURS = "prefect_mlops."
_ALSO: weakref.WeakSet[Any] = weakref.WeakSet()  # the functions of other flows given the same exit


def end_heartbeats_with_run(*flows: Any) -> bool:
    """Let runs of this package's sync flows, and of `flows` (flows or their functions), end without
    waiting for their heartbeat thread's next step.

    True when in place. A Prefect whose heartbeat context has another signature is left alone (False):
    its flows then end as that Prefect ends them.
    """
    from prefect import flow_engine

    for given in flows:
        _ALSO.add(getattr(given, "fn", given))

    current = getattr(flow_engine, "_send_heartbeats", None)
    if getattr(current, "prefect_mlops_original", None) is not None:
        return True
    if current is None or list(inspect.signature(current).parameters) != ["engine", "join_on_exit"]:
        return False

    @contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        fn = getattr(getattr(engine, "flow", None), "fn", None)
        ours = str(getattr(fn, "__module__", "")).startswith(_OURS) or _given(fn)
        with send_heartbeats.prefect_mlops_original(engine, join_on_exit=join_on_exit and not ours):
            yield

    send_heartbeats.prefect_mlops_original = current
    flow_engine._send_heartbeats = send_heartbeats
    return True


def _given(fn: Any) -> bool:
    try:
        return fn in _ALSO
    except TypeError:  # not weak-referenceable: never given
        return False
