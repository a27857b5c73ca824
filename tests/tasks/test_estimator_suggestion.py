"""A misspelled estimator is refused before any work, with the closest import path."""

from __future__ import annotations

import pytest

from prefect_mlops.errors import ConfigError
from prefect_mlops.tasks.lineage import TrainerSpec, closest_estimator


@pytest.mark.parametrize(("typed", "meant"), [
    ("sklearn.ensemble.RandomForrestClassifier", "sklearn.ensemble.RandomForestClassifier"),
    ("sklearn.linear_models.LogisticRegression", "sklearn.linear_model.LogisticRegression"),
    ("sklearn.ensemble.HistGradientBoostingClassifer", "sklearn.ensemble.HistGradientBoostingClassifier"),
])
def test_a_misspelled_estimator_suggests_the_closest_match(typed, meant):
    with pytest.raises(ConfigError, match=f"cannot be imported .*did you mean '{meant}'"):
        TrainerSpec(estimator=typed).check("classification")


def test_no_suggestion_when_the_path_imports_or_nothing_is_close():
    assert closest_estimator("sklearn.linear_model.LogisticRegression") is None
    with pytest.raises(ConfigError, match="cannot be imported") as caught:
        TrainerSpec(estimator="nowhere.Model").check()
    assert "did you mean" not in str(caught.value)
