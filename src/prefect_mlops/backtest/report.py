"""The backtest's outputs: a markdown table, a JSON of every figure, a PNG per stream, a Prefect
artifact and an MLflow run per stream.

Example:
    ```python
    from prefect_mlops.backtest.report import meets_target
    summary = {"expect": "stable", "retrains": 0, "oracle_retrains": 9, "crashes": 0, "bad_promotions": 0,
               "gain_recovered": None, "static": 0.8, "policy": 0.8, "metric": "roc_auc"}
    assert meets_target(summary, delta=0.02) == (True, "0 retrains")
    ```
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_mlops.backtest.replay import StreamResult, lower_is_better, worse_by

if TYPE_CHECKING:
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.workspace import Workspace

GAIN_TARGET = 0.90
RETRAIN_SHARE_TARGET = 1 / 3


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure for a table: 4 significant digits, '-' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def gain_text(gain: float | None) -> str:
    """The gain recovered as a table shows it: two decimals, '-' when there is nothing to recover."""
    return "-" if gain is None else f"{gain:.2f}".replace("-0.00", "0.00")


def meets_target(summary: dict[str, Any], *, delta: float) -> tuple[bool, str]:
    """The issue's benchmark targets for one stream, and the first one missed (or what was met).

    Every stream: no crash, no bad promotion. Drifting streams: at least 0.90 of the oracle's gain
    with at most a third of its retrains. Stable streams: no retraining. Covariate shift: the policy
    no worse than the static model by more than `delta` (relative).
    """
    if summary["crashes"]:
        return False, f"{summary['crashes']} crashes"
    if summary["bad_promotions"]:
        return False, f"{summary['bad_promotions']} bad promotions"
    expect = summary["expect"]
    if expect == "stable":
        return (summary["retrains"] == 0), f"{summary['retrains']} retrains"
    if expect == "covariate":
        if summary["policy"] is None or summary["static"] is None:
            return False, "no policy figure"
        loss = worse_by(summary["policy"], summary["static"], lower_better=lower_is_better(summary["metric"]))
        return (loss <= delta), f"policy {'no worse than' if loss <= delta else 'worse than'} static"
    gain = summary["gain_recovered"]
    share = summary["retrains"] / max(1, summary["oracle_retrains"])
    if gain is None:
        return False, "no gain to recover (oracle not better than static)"
    if gain < GAIN_TARGET:
        return False, f"gain {gain:.2f} < {GAIN_TARGET:.2f}"
    if share > RETRAIN_SHARE_TARGET + 1e-9:
        return False, f"retrains {summary['retrains']}/{summary['oracle_retrains']} > 1/3 of the oracle's"
    return True, f"gain {gain:.2f}, retrains {summary['retrains']}/{summary['oracle_retrains']}"


def markdown_table(results: list[StreamResult]) -> str:
    """One row per stream: the three approaches' mean metric, the gain recovered, the loop's actions."""
    head = ("| stream | data | metric | periods | static | oracle | policy | gain recovered | retrains (oracle) "
            "| promotions | bad promotions | crashes | wall s | target |")
    rule = "|" + "---|" * 14
    lines = [head, rule]
    for result in results:
        s = result.summary()
        ok, why = meets_target(s, delta=result.delta)
        lines.append(
            f"| {s['stream']} | {result.stream['expect']} | {s['metric']}{' ↓' if result.lower_is_better else ' ↑'} "
            f"| {s['periods_scored']} | {fmt(s['static'])} | {fmt(s['oracle'])} | {fmt(s['policy'])} "
            f"| {gain_text(s['gain_recovered'])} | {s['retrains']} ({s['oracle_retrains']}) | {s['promotions']} "
            f"| {s['bad_promotions']} | {s['crashes']} | {s['wall_seconds']:.0f} | {'met' if ok else 'missed'}: "
            f"{why} |")
    return "\n".join(lines) + "\n"


def stream_markdown(result: StreamResult) -> str:
    """One stream's periods: the three metrics, and what the policy decided after each."""
    lines = [f"## {result.name}", "", str(result.stream["description"]), "",
             f"First training: {result.first_training}", "",
             "| period | rows | static | oracle | policy | champion | trigger | retrained | promoted | decision |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in result.periods:
        bad = " (bad)" if p.bad_promotion else ""
        decision = p.decision.replace("|", "/")
        if len(decision) > 240:  # the JSON keeps the whole text
            decision = decision[:237] + "..."
        lines.append(f"| {p.period} | {p.rows} | {fmt(p.static)} | {fmt(p.oracle)} | {fmt(p.policy)} "
                     f"| {p.champion or '-'} | {p.trigger or ''} | {'yes' if p.retrained else ''} "
                     f"| {'yes' + bad if p.promoted else ''} "
                     f"| {decision} |")
    if result.crashes:
        lines += ["", "Crashes:", *(f"- {c}" for c in result.crashes)]
    return "\n".join(lines) + "\n"


def plot_stream(result: StreamResult, path: Path) -> Path:
    """Metric per period for static, oracle and policy, with retrain, promotion and drift markers."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a file is the output
    import matplotlib.pyplot as plt

    periods = [p.period for p in result.periods]
    nan = float("nan")
    series = {a: [nan if getattr(p, a) is None else getattr(p, a) for p in result.periods]
              for a in ("static", "oracle", "policy")}
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    ax.plot(periods, series["static"], color="0.55", marker="o", ms=3, lw=1.4, label="static")
    ax.plot(periods, series["oracle"], color="tab:green", marker="o", ms=3, lw=1.4, ls="--",
            label=f"oracle (retrains every period on the last {result.oracle_window})")
    ax.plot(periods, series["policy"], color="tab:blue", marker="o", ms=4, lw=2, label="policy (champion in force)")
    for drift in result.stream.get("drift_periods") or []:
        if result.stream["expect"] != "stable" and drift >= (periods[0] if periods else 0):
            ax.axvline(drift - 0.5, color="tab:red", ls=":", lw=1.2)
    low = min((v for vals in series.values() for v in vals if math.isfinite(v)), default=0.0)
    retrained = [p.period for p in result.periods if p.retrained]
    promoted = [p.period for p in result.periods if p.promoted]
    crashed = [p.period for p in result.periods if p.crash]
    if retrained:
        ax.scatter(retrained, [low] * len(retrained), marker="x", color="tab:orange", zorder=5,
                   label="retrained after this period")
    for i, t in enumerate(promoted):  # the new champion serves from the next period on
        bad = next(p.bad_promotion for p in result.periods if p.period == t)
        ax.axvline(t + 0.5, color="tab:red" if bad else "tab:purple", lw=1, alpha=0.7,
                   label=("promotion" if i == 0 else None))
    if crashed:
        ax.scatter(crashed, [low] * len(crashed), marker="X", color="tab:red", s=60, zorder=6, label="crash")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("period")
    ax.set_ylabel(f"{result.metric} ({'lower' if result.lower_is_better else 'higher'} is better)")
    gain = result.gain
    ax.set_title(f"{result.name}: gain recovered {'-' if gain is None else f'{gain:.2f}'}, "
                 f"{result.retrains} retrains, {result.promotions} promotions", fontsize=10)
    if result.stream.get("drift_periods") and result.stream["expect"] != "stable":
        ax.plot([], [], color="tab:red", ls=":", label="known drift point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(results: list[StreamResult], path: Path, **meta: Any) -> Path:
    """Every figure of every stream, with the run's settings."""
    from prefect_mlops.tasks.train import package_versions

    payload = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "packages": package_versions("prefect-mlops", "prefect", "mlflow", "scikit-learn", "evidently",
                                            "great-expectations", "river", "islp", "pandas", "numpy"),
               **meta, "streams": [r.to_dict() for r in results]}
    path.write_text(json.dumps(strict(payload), indent=1, allow_nan=False) + "\n")
    return path


def strict(value: Any) -> Any:
    """`value` as strict JSON: NaN and infinities become null, timestamps ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return strict(value.item())
    return str(value)


def publish_artifact(table: str, *, key: str = "backtest") -> str | None:
    """The table as a Prefect markdown artifact; returns its id (None when no Prefect API answers)."""
    from prefect.artifacts import create_markdown_artifact

    artifact_id = create_markdown_artifact(markdown="# Backtest: policy vs static vs oracle\n\n" + table, key=key,
                                           description="prefect-mlops backtest: gain recovered per stream")
    return str(artifact_id)


def log_mlflow_run(result: StreamResult, *, server: MlflowServer, workspace: Workspace, files: list[Path]) -> str:
    """An MLflow run in the stream's store: the settings as params, the figures as metrics, files as artifacts."""
    from mlflow.entities import Metric, Param

    client = server.client(workspace)
    found = client.get_experiment_by_name("backtest")
    experiment_id = found.experiment_id if found else client.create_experiment(
        "backtest", artifact_location=workspace.artifact_root)
    run = client.create_run(experiment_id, run_name=f"backtest-{result.name}", tags={"prefect_mlops.backtest": "1"})
    run_id = run.info.run_id
    try:
        params = {"stream": result.name, "metric": result.metric, "expect": result.stream["expect"],
                  "periods": result.stream["periods"], "initial_periods": result.stream["initial_periods"],
                  "oracle_window": result.oracle_window, "bad_promotion_delta": result.delta,
                  "estimator": result.stream["estimator"],
                  "model_policy": json.dumps(result.policy["model_policy"], sort_keys=True),
                  "retrain_policy": json.dumps(result.policy["retrain_policy"], sort_keys=True)}
        stamp = int(time.time() * 1000)
        summary = result.summary()
        metrics = [Metric(k, float(v), stamp, 0) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for p in result.periods:
            metrics += [Metric(f"period_{a}", float(getattr(p, a)), stamp, p.period)
                        for a in ("static", "oracle", "policy")
                        if getattr(p, a) is not None and math.isfinite(getattr(p, a))]
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        for path in files:
            client.log_artifact(run_id, str(path))
        client.log_dict(run_id, strict(result.to_dict()), "backtest.json")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
