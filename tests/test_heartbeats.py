"""A run of this package's flows ends with the run; its heartbeats are sent as before; other flows keep Prefect's."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from prefect import flow, flow_engine
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import prefect_mlops.flows  # noqa: F401  (puts it in place)
from prefect_mlops.heartbeats import end_heartbeats_with_run


def _probe(module: str, sent: threading.Event):
    def heartbeat_probe() -> bool:
        return sent.wait(30)  # the run lasts until its first heartbeat is out

    heartbeat_probe.__module__ = module
    return flow(name=f"probe-{module}")(heartbeat_probe)


def test_our_flow_runs_end_without_waiting_for_the_heartbeat_thread_and_others_keep_prefects(monkeypatch):
    assert end_heartbeats_with_run() and end_heartbeats_with_run()  # in place once, however often asked
    original = flow_engine._send_heartbeats.prefect_mlops_original
    joined: list[tuple[str, bool]] = []
    sent: dict[str, threading.Event] = {}

    @contextmanager
    def spy(engine, join_on_exit=True):
        joined.append((engine.flow.name, join_on_exit))
        with original(engine, join_on_exit=join_on_exit):
            yield

    emit = flow_engine.FlowRunEngine._emit_flow_run_heartbeat

    def record(self, *args, **kwargs):
        result = emit(self, *args, **kwargs)
        sent[self.flow.name].set()
        return result

    monkeypatch.setattr(flow_engine._send_heartbeats, "prefect_mlops_original", spy)
    monkeypatch.setattr(flow_engine.FlowRunEngine, "_emit_flow_run_heartbeat", record)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        for module in ("prefect_mlops.flows.probe", "someone.elses.flows", "someone.elses.chosen"):
            sent[f"probe-{module}"] = threading.Event()
            probe = _probe(module, sent[f"probe-{module}"])
            if module.endswith("chosen"):
                assert end_heartbeats_with_run(probe)  # a user's flow given the same exit
            assert probe() is True  # a heartbeat was sent during the run
    assert joined == [("probe-prefect_mlops.flows.probe", False), ("probe-someone.elses.flows", True),
                      ("probe-someone.elses.chosen", False)]


def test_a_prefect_with_another_heartbeat_context_is_left_alone(monkeypatch):
    @contextmanager
    def other(engine, join_on_exit=True, interval=1.0):
        yield

    monkeypatch.setattr(flow_engine, "_send_heartbeats", other)
    assert end_heartbeats_with_run() is False
    assert flow_engine._send_heartbeats is other
