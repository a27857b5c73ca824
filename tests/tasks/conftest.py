"""Fixtures shared by the stage tests."""

from __future__ import annotations

import pytest

from tests.tasks.stages import promote_cycle, train_and_judge


@pytest.fixture
def first(churn_source, churn_features, fast_trainer, mlflow_server, workspace, window0):
    """A first cycle of churn, trained, judged and promoted: v1 is the champion."""
    cycle = train_and_judge(churn_source, churn_features, fast_trainer, server=mlflow_server, workspace=workspace,
                            window=window0)
    promote_cycle(cycle, server=mlflow_server, workspace=workspace)
    return cycle
