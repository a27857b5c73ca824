"""Quality gate: may the challenger replace the champion?

The verdict lists every rule with its outcome, passed or failed. A NaN or missing metric
fails its rule (NaN compares False both ways, so it must be caught explicitly). A failed
gate is a verdict, not an error: the flow ends in a `Rejected` state with the reasons.
"""

from __future__ import annotations

import math

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.blocks.model_policy import LOWER_IS_BETTER, ModelPolicy
from prefect_mlops.errors import ConfigError
from prefect_mlops.log import run_logger
from prefect_mlops.refs import artifact_key
from prefect_mlops.tasks.evaluate import Evaluation


class Rule(BaseModel):
    """One rule of the gate and how the challenger fared."""

    model_config = ConfigDict(frozen=True)

    rule: str = Field(description="Which rule: floor, evidence, beyond-noise, champion-degraded, champion-margin, "
                                  "min-gain, slice-floor, first-run.")
    passed: bool
    reason: str = Field(description="The rule's outcome in words, with the numbers.")


class GateVerdict(BaseModel):
    """The gate's decision on one challenger: the blessing that register and deploy require."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    model_name: str
    challenger_run_id: str
    champion_version: str | None
    primary_metric: str
    rules: list[Rule]

    @property
    def reasons(self) -> list[str]:
        """The failed rules' reasons, or every reason when the gate passed."""
        failed = [r.reason for r in self.rules if not r.passed]
        return failed or [r.reason for r in self.rules]

    @property
    def main_reason(self) -> str:
        """The first failed rule, or the comparison with the champion when all passed."""
        failed = [r for r in self.rules if not r.passed]
        if failed:
            return failed[0].reason
        margin = [r for r in self.rules if r.rule in ("champion-margin", "champion-degraded", "beyond-noise",
                                                      "min-gain", "first-run")]
        return (margin or self.rules or [Rule(rule="none", passed=True, reason="no rules")])[0].reason


def _better(metric: str, value: float, bound: float) -> bool:
    return value <= bound if metric in LOWER_IS_BETTER else value >= bound


def _fmt(value: float | None) -> str:
    return "missing" if value is None else "NaN" if math.isnan(value) else f"{value:.4f}"


def judge(evaluation: Evaluation, policy: ModelPolicy) -> GateVerdict:
    """Apply the policy's rules to an evaluation.

    Example:
        ```python
        from prefect_mlops.blocks import ModelPolicy
        from prefect_mlops.tasks.evaluate import Evaluation, Scores
        from prefect_mlops.tasks.gate import judge
        scores = Scores(role="challenger", run_id="r1", overall={"accuracy": 0.8, "f1": 0.7,
                        "roc_auc": 0.85, "log_loss": 0.4})
        evaluation = Evaluation(model_name="m", task="classification", primary_metric="roc_auc",
                                holdout_rows=100, challenger=scores, smoke_sample_uri="unused")
        verdict = judge(evaluation, ModelPolicy(floors={"roc_auc": 0.9}))
        assert not verdict.passed and "roc_auc" in verdict.main_reason
        ```
    """
    policy.check_metrics(evaluation.task)
    metric = evaluation.primary_metric
    if metric != policy.primary(evaluation.task):
        raise ConfigError(f"evaluation used primary metric {metric!r} but the policy asks for "
                          f"{policy.primary(evaluation.task)!r}; evaluate with the same policy")
    rules: list[Rule] = []
    challenger = evaluation.challenger.overall

    for name, floor in policy.floors.items():
        value = challenger.get(name)
        ok = value is not None and math.isfinite(value) and _better(name, value, floor)
        word = "ceiling" if name in LOWER_IS_BETTER else "floor"
        rules.append(Rule(rule="floor", passed=ok, reason=f"{name}={_fmt(value)} "
                          f"{'meets' if ok else 'misses'} the {word} {floor:.4f}"))

    champion = evaluation.champion
    if champion is None:
        promote = policy.first_run == "promote"
        rules.append(Rule(rule="first-run", passed=promote,
                          reason="no champion yet: first-run policy promotes a challenger that meets the floors"
                          if promote else "no champion yet: first-run policy says a person must promote"))
    else:
        rules += _against_champion(evaluation, policy)

    for name, floor in policy.slice_floors.items():
        for value_name, metrics in evaluation.challenger.slices.items():
            rows = evaluation.challenger.slice_rows.get(value_name, 0)
            value = metrics.get(name)
            if rows < policy.min_slice_rows:
                rules.append(Rule(rule="slice-floor", passed=True,
                                  reason=f"slice {value_name!r}: {rows} rows, fewer than {policy.min_slice_rows}; "
                                         f"{name}={_fmt(value)} not judged"))
                continue
            ok = value is not None and math.isfinite(value) and _better(name, value, floor)
            rules.append(Rule(rule="slice-floor", passed=ok,
                              reason=f"slice {value_name!r}: {name}={_fmt(value)} "
                                     f"{'meets' if ok else 'misses'} the floor {floor:.4f}"))

    return GateVerdict(passed=all(r.passed for r in rules), model_name=evaluation.model_name,
                       challenger_run_id=evaluation.challenger.run_id,
                       champion_version=champion.version if champion else None, primary_metric=metric,
                       rules=rules)


def _against_champion(evaluation: Evaluation, policy: ModelPolicy) -> list[Rule]:
    """The champion rules: enough evidence, then better beyond noise (or not worse than a degraded champion)."""
    champion, metric = evaluation.champion, evaluation.primary_metric
    value, best = evaluation.challenger.overall.get(metric), champion.overall.get(metric)
    sign = 1 if metric in LOWER_IS_BETTER else -1  # how "worse" points for this metric
    finite = value is not None and best is not None and math.isfinite(value) and math.isfinite(best)
    worse_by = sign * (value - best) if finite else math.nan
    gained = -worse_by
    low = high = math.nan  # the 95% interval of the gain (challenger better: positive)
    if evaluation.interval and all(math.isfinite(v) for v in evaluation.interval):
        low, high = sorted((-sign * evaluation.interval[0], -sign * evaluation.interval[1]))
    interval = f", 95% interval of the gain [{low:+.4f}, {high:+.4f}]" if math.isfinite(low) else ""
    head = f"{metric} {_fmt(value)} vs champion v{champion.version} {_fmt(best)}: "
    if not finite:
        return [Rule(rule="champion-margin", passed=False, reason=head + "cannot compare a missing or NaN metric")]
    if evaluation.holdout_rows < policy.min_holdout_rows:
        return [Rule(rule="evidence", passed=False,
                     reason=head + f"not enough evidence: a hold-out of {evaluation.holdout_rows} rows cannot tell "
                            f"the two apart (min_holdout_rows {policy.min_holdout_rows}); the champion stays. Widen "
                            "the training window or lower ModelPolicy.min_holdout_rows")]
    moved = f"{'worse' if worse_by > 0 else 'better'} by {abs(worse_by):.4f}"
    if policy.promote_when == "not-worse":
        rules = [Rule(rule="champion-margin", passed=worse_by <= policy.max_drop,
                      reason=head + f"{moved}, allowed drop {policy.max_drop:.4f}{interval}")]
        if policy.min_gain is not None:
            rules.append(Rule(rule="min-gain", passed=gained >= policy.min_gain,
                              reason=f"{metric} gain over champion {_fmt(gained)}, required {policy.min_gain:.4f}"))
        return rules
    # "Not worse" must be shown too: on a hold-out too noisy to bound the loss, the degraded champion stays.
    not_worse = -low <= policy.max_drop if math.isfinite(low) else worse_by <= policy.max_drop
    if evaluation.champion_degraded and not_worse:
        return [Rule(rule="champion-degraded", passed=True,
                     reason=head + f"{moved}{interval}, no worse than the allowed drop {policy.max_drop:.4f}, and "
                            f"the champion measurably degraded: {evaluation.champion_degraded}")]
    if low > 0:
        return [Rule(rule="beyond-noise", passed=True, reason=head + f"{moved}{interval}: better beyond noise")]
    if policy.min_gain is not None and gained >= policy.min_gain:
        return [Rule(rule="min-gain", passed=True,
                     reason=head + f"{moved}, at least the required gain {policy.min_gain:.4f}{interval}")]
    why = "a tie keeps the champion" if abs(worse_by) < 1e-12 else \
        "worse" if worse_by > 0 else "not better beyond noise"
    return [Rule(rule="beyond-noise", passed=False,
                 reason=head + f"{moved}{interval}: {why}"
                        + (f" (required gain {policy.min_gain:.4f})" if policy.min_gain is not None else "")
                        + "; the champion stays")]


def render_verdict(verdict: GateVerdict) -> str:
    """Markdown: the verdict and every rule."""
    head = "PASSED: the challenger may be promoted" if verdict.passed else "REJECTED: the champion stays"
    lines = [f"# Gate verdict for {verdict.model_name}: {head}", "",
             f"Challenger run `{verdict.challenger_run_id}`, champion "
             f"{'v' + verdict.champion_version if verdict.champion_version else 'none'}.", "",
             "| rule | passed | reason |", "|---|---|---|"]
    lines += [f"| {r.rule} | {'yes' if r.passed else '**no**'} | {r.reason} |" for r in verdict.rules]
    return "\n".join(lines)


@task(name="quality-gate", task_run_name="gate-{evaluation.model_name}")
def quality_gate(evaluation: Evaluation, policy: ModelPolicy | None = None) -> GateVerdict:
    """Judge the challenger (see `judge`) and publish the verdict as a markdown artifact."""
    verdict = judge(evaluation, policy or ModelPolicy())
    logger = run_logger()
    (logger.info if verdict.passed else logger.warning)(
        "gate %s: %s", "passed" if verdict.passed else "rejected", "; ".join(verdict.reasons))
    create_markdown_artifact(render_verdict(verdict), key=artifact_key("gate-verdict", verdict.model_name),
                             description=f"Gate verdict: {'passed' if verdict.passed else 'rejected'}")
    return verdict
