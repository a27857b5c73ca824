"""The rules a challenger must pass before it replaces the champion."""

from __future__ import annotations

import math
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from prefect_mlops.errors import ConfigError
from prefect_mlops.refs import reject_unknown_keys

CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
# The values each metric can take: a floor outside them can never be met (or always is).
METRIC_RANGES = {"accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "roc_auc": (0.0, 1.0), "r2": (-math.inf, 1.0),
                 "log_loss": (0.0, math.inf), "rmse": (0.0, math.inf), "mae": (0.0, math.inf)}


class ModelPolicy(Block):
    """The quality gate's rules: metric floors, the margin against the champion, slice floors.

    For error metrics (`rmse`, `mae`, `log_loss`) a floor is a ceiling: lower is better.

    Example:
        ```python
        from prefect_mlops.blocks import ModelPolicy
        saved = ModelPolicy.load("BLOCK_NAME")
        policy = ModelPolicy(floors={"roc_auc": 0.7}, max_drop=0.01)
        policy.check_metrics("classification")
        ```
    """

    _block_type_name = "Model Policy"
    _block_type_slug = "prefect-mlops-model-policy"
    _logo_url = "https://images.ctfassets.net/gm98wzqotmnx/4Jpbhw56J2PijpCTsDlv2D/3a3d9d5a8b4a6c69d96f5c6b7c5a87a1/mlflow.png"
    _documentation_url = "https://github.com/prefect-mlops/prefect-mlops#the-quality-gate"
    _description = "Metric floors, the allowed drop against the champion, and per-slice floors."

    primary_metric: str | None = Field(
        default=None,
        description="Metric compared with the champion; empty: roc_auc for classification, rmse for regression.",
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Absolute floor per metric on the hold-out (a ceiling for rmse, mae, log_loss).",
    )
    max_drop: float = Field(
        default=0.01, ge=0,
        description="How much worse than the champion the challenger may be (δ): under 'not-worse', or against a "
                    "champion that measurably degraded.",
    )
    min_gain: float | None = Field(
        default=None, ge=0,
        description="ε: under 'beyond-noise' a gain of at least ε promotes even inside the noise; under 'not-worse' "
                    "the challenger must also gain at least ε.",
    )
    slice_floors: dict[str, float] = Field(
        default_factory=dict, description="Floor per metric that every slice of the slice column must reach."
    )
    min_slice_rows: int = Field(
        default=30, ge=1, description="Slices with fewer hold-out rows are reported but not judged."
    )
    promote_when: Literal["beyond-noise", "not-worse"] = Field(
        default="beyond-noise",
        description="With a champion: 'beyond-noise' promotes only a challenger whose 95% bootstrap lower bound of "
                    "the gain is above 0 (or whose gain reaches min_gain), or one not worse than a champion that "
                    "measurably degraded; a tie keeps the champion. 'not-worse' allows a drop of max_drop.",
    )
    min_holdout_rows: int = Field(
        default=30, ge=1,
        description="With a champion, a smaller hold-out gives a 'not enough evidence' verdict: the champion stays.",
    )
    deploy_strategy: Literal["direct", "canary", "shadow"] = Field(
        default="direct",
        description="How a challenger that passed the gate goes live: 'direct' moves @champion; 'canary' gives it "
                    "@canary and 5% of keys for the progressive-rollout flow to raise or roll back; 'shadow' gives "
                    "it @shadow: it scores every request off the response path, and promotion stays with the gate.",
    )
    first_run: Literal["promote", "reject"] = Field(
        default="promote",
        description="With no champion yet: 'promote' if the floors pass, or 'reject' to wait for a human.",
    )

    @field_validator("floors", "slice_floors")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        for metric, floor in value.items():
            if not math.isfinite(floor):
                raise ValueError(f"floor for {metric!r} must be a finite number, got {floor}")
        return value

    @field_validator("floors", "slice_floors")
    @classmethod
    def _in_metric_range(cls, value: dict[str, float], info: Any) -> dict[str, float]:
        for metric, floor in value.items():
            low, high = METRIC_RANGES.get(metric, (-math.inf, math.inf))
            if not low <= floor <= high:
                raise ValueError(f"{info.field_name}[{metric!r}] = {floor} is outside the range of {metric} "
                                 f"[{low}, {high}]; it could never be met")
        return value

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Prefect's own keys (block_type_slug, _block_document_id...) travel with a saved Block.
        return reject_unknown_keys(cls, data, also=("block_type_slug",))

    def metric_names(self, task: str) -> tuple[str, ...]:
        """The metrics evaluate computes for a `classification` or `regression` task."""
        return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS

    def primary(self, task: str) -> str:
        """The metric compared with the champion."""
        return self.primary_metric or ("roc_auc" if task == "classification" else "rmse")

    def check_metrics(self, task: str) -> None:
        """Raise a `ConfigError` naming any metric this policy uses that `task` does not compute."""
        known = self.metric_names(task)
        named = {"primary_metric": [self.primary(task)], "floors": list(self.floors),
                 "slice_floors": list(self.slice_floors)}
        for field, metrics in named.items():
            for metric in metrics:
                if metric not in known:
                    raise ConfigError(
                        f"model policy field {field!r} names metric {metric!r}, which a {task} model "
                        f"does not report; use one of {', '.join(known)}"
                    )
