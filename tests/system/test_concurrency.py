"""Two continuous-training runs of one model started at once: one trains, the other waits for the
deployment's slot (concurrency limit 1, ENQUEUE) and then finds nothing new; the registry holds one
version with consistent aliases."""

from __future__ import annotations

import pytest

from prefect_mlops.demo import period_window

pytestmark = [pytest.mark.system, pytest.mark.slow]
FAST = {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}


def test_two_runs_for_one_model_never_overlap_and_the_registry_stays_consistent(system):
    model = "concurrent"
    params = {"model_name": model, "window": period_window(0), "trainer": FAST}
    started = [system.run("continuous-training/churn", **params) for _ in range(2)]
    runs = [system.wait(run.id, timeout=300) for run in started]

    assert sorted(run.state.name for run in runs) == ["Completed", "Skipped"], \
        [(run.state.name, run.state.message) for run in runs]
    first, second = sorted(runs, key=lambda run: run.start_time)
    assert second.start_time >= first.end_time, "the two runs overlapped"
    assert "AwaitingConcurrencySlot" in [state.name for state in system.states(second.id)]

    client = system.mlflow.client(system.workspace)
    assert [str(v.version) for v in client.search_model_versions(f"name='{model}'")] == ["1"]
    assert {k: str(v) for k, v in client.get_registered_model(model).aliases.items()} == {"champion": "1"}
    assert system.champion(model) == "1"
