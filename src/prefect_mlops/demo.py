"""`make demo`: the continuous-training loop, end to end, on the embedded default.

Deterministic synthetic churn data in monthly periods: period 0 trains the first champion,
period 1 is stable, period 2 drifts (covariates shift and the label's dependence on them
changes). Everything lands in one folder: the MLflow SQLite store, its model files, the
workspace (snapshots, suites, drift reports) and Prefect's own database.

Example:
    ```python
    from prefect_mlops.demo import make_churn_data
    frame = make_churn_data(period=0, rows=100)
    assert {"churned", "plan", "region"} <= set(frame.columns)
    ```
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL = "churn"
MARKER = ".prefect-mlops-demo"
DRIFTED_PERIOD = 2


def make_churn_data(period: int, rows: int = 4000, seed: int = 7) -> pd.DataFrame:
    """One month of synthetic churn data; periods from DRIFTED_PERIOD on are drifted."""
    rng = np.random.default_rng(seed * 1000 + period)
    drifted = period >= DRIFTED_PERIOD
    start = pd.Timestamp("2024-01-01") + pd.DateOffset(months=period)
    seconds = rng.uniform(0, (start + pd.DateOffset(months=1) - start).total_seconds(), rows)
    tenure = rng.normal(36 if drifted else 24, 10, rows).clip(0, None)
    spend = rng.lognormal(4.2 if drifted else 4.0, 0.35, rows)
    calls = rng.poisson(3.0 if drifted else 1.5, rows)
    usage = rng.normal(30 if drifted else 40, 12, rows)
    usage[rng.random(rows) < 0.03] = np.nan
    plan = rng.choice(["basic", "standard", "premium"], rows, p=[0.2, 0.3, 0.5] if drifted else [0.5, 0.35, 0.15])
    channel = rng.choice(["web", "store", "phone"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows, p=[0.3, 0.3, 0.2, 0.2])
    plan_effect = {"basic": 0.4, "standard": 0.0, "premium": -0.6}
    if drifted:  # the concept moves too: premium customers now churn, usage matters more
        plan_effect = {"basic": -0.3, "standard": 0.0, "premium": 0.7}
    logit = (-0.6 - 0.06 * (tenure - 24) + 0.7 * (calls - 1.5)
             + np.vectorize(plan_effect.get)(plan) + np.where(region == "east", 0.3, 0.0)
             + (-0.09 if drifted else -0.01) * (np.nan_to_num(usage, nan=40) - 35))
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({
        "event_time": start + pd.to_timedelta(np.sort(seconds), unit="s"),
        "tenure_months": tenure.round(1), "monthly_spend": spend.round(2), "support_calls": calls,
        "usage_hours": usage.round(1), "plan": plan, "channel": channel, "region": region, "churned": churned,
    })


def period_window(period: int) -> str:
    """The ISO-8601 interval of one monthly period."""
    start = pd.Timestamp("2024-01-01") + pd.DateOffset(months=period)
    return f"{start.date()}/{(start + pd.DateOffset(months=1)).date()}"


def _reset(home: Path) -> None:
    if home.exists():
        if not (home / MARKER).exists() and any(home.iterdir()):
            sys.exit(f"{home} exists and was not made by the demo; choose another folder with --home")
        for child in home.iterdir():
            if child.name != "prefect":  # keep Prefect's database: restarting it costs seconds
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `python -m prefect_mlops.demo`; safe to delete\n")


def run(home: Path) -> list[dict[str, Any]]:
    """Run the story; returns one row per step for the final table."""
    from prefect_mlops.blocks import DataSource, MlflowServer, ModelPolicy
    from prefect_mlops.flows import continuous_training, drift_monitor, rollback
    from prefect_mlops.tasks.features import FeatureSpec
    from prefect_mlops.tasks.lineage import TrainerSpec

    data = home / "data" / "churn.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([make_churn_data(p) for p in range(DRIFTED_PERIOD + 1)]).to_parquet(data, index=False)
    workspace = str(home / "workspace")
    server = MlflowServer(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                          artifact_location=(home / "mlartifacts").as_uri(), experiment="churn-demo")
    source = DataSource(uri=str(data), time_column="event_time")
    features = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls",
                                                      "usage_hours"],
                           categorical=["plan", "channel"], slice_column="region", time_column="event_time")
    policy = ModelPolicy(floors={"roc_auc": 0.65}, max_drop=0.01, slice_floors={"roc_auc": 0.55})
    trainer = TrainerSpec(estimator="sklearn.ensemble.HistGradientBoostingClassifier",
                          params={"max_iter": 150, "learning_rate": 0.05})
    common = {"mlflow_server": server, "workspace": workspace}
    rows: list[dict[str, Any]] = []

    def cycle_row(step: str, report: Any, drift: Any = None) -> dict[str, Any]:
        metric = (f"{report.primary_metric} {report.challenger_metric:.3f}" if report.challenger_metric is not None
                  else "-")
        if report.champion_metric is not None:
            metric += f" (champion {report.champion_metric:.3f})"
        verdict = {"promoted": "passed", "rejected": "REJECTED", "skipped": "skipped"}[report.outcome]
        reason = report.gate_reason or report.message
        return {"step": step, "drift_share": "-" if drift is None else f"{drift.drift_share:.2f}",
                "retrained": "yes" if report.outcome != "skipped" else "no",
                "verdict": f"{verdict}: {reason}", "champion": _champion(server, workspace), "metric": metric}

    say("1. first training on period 0 (no champion yet: first-run policy)")
    first = continuous_training(MODEL, source, features, trainer, policy=policy, window=period_window(0), **common)
    rows.append(cycle_row("1 first training, period 0", first))

    say("2. scheduled re-run on the same data")
    again = continuous_training(MODEL, source, features, trainer, policy=policy, window=period_window(0), **common)
    rows.append(cycle_row("2 re-run, unchanged data", again))

    say("3. drift monitor on period 1 (stable)")
    stable = drift_monitor(MODEL, source, window=period_window(1), retrain=True, policy=policy, **common)
    rows.append({"step": "3 drift monitor, period 1", "drift_share": f"{stable.drift.drift_share:.2f}",
                 "retrained": "no", "verdict": "no drift: nothing to retrain",
                 "champion": _champion(server, workspace), "metric": "-"})

    say(f"4. drift monitor on period {DRIFTED_PERIOD} (drifted) -> retrain -> gate")
    drifted = drift_monitor(MODEL, source, window=period_window(DRIFTED_PERIOD), retrain=True, policy=policy,
                            **common)
    rows.append(cycle_row(f"4 drift monitor, period {DRIFTED_PERIOD}", drifted.retrain, drifted.drift)
                if drifted.retrain else {"step": "4 drift monitor", "drift_share": f"{drifted.drift.drift_share:.2f}",
                                         "retrained": "no", "verdict": "no drift found",
                                         "champion": _champion(server, workspace), "metric": "-"})

    say("5. a deliberately weak challenger (predicts the base rate)")
    weak = continuous_training(MODEL, source, features, TrainerSpec(estimator="sklearn.dummy.DummyClassifier",
                               params={"strategy": "prior"}), policy=policy,
                               window=period_window(DRIFTED_PERIOD), **common)
    rows.append(cycle_row("5 weak challenger", weak))

    say("6. rollback")
    back = rollback(MODEL, reason="demo: show that one call restores the previous champion", **common)
    rows.append({"step": "6 rollback", "drift_share": "-", "retrained": "no",
                 "verdict": f"rolled back from v{back.previous_version}", "champion": f"v{back.champion_version}",
                 "metric": "-"})
    return rows


def _champion(server: Any, workspace: str) -> str:
    from prefect_mlops.tasks.lineage import find_model
    from prefect_mlops.workspace import Workspace

    found = find_model(MODEL, mlflow_server=server, workspace=Workspace(workspace))
    return f"v{found.model.version}" if found else "none"


def say(text: str) -> None:
    """A step headline."""
    print(f"\n=== {text}", flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The final table, fixed-width."""
    heads = {"step": "step", "drift_share": "drift share", "retrained": "retrained?",
             "verdict": "gate verdict (main reason)", "champion": "champion", "metric": "hold-out metric"}
    for row in rows:
        if len(row["verdict"]) > 90:
            row["verdict"] = row["verdict"][:87] + "..."
    widths = {k: max(len(heads[k]), *(len(str(r[k])) for r in rows)) for k in heads}
    line = " | ".join(heads[k].ljust(widths[k]) for k in heads)
    print("\n" + line + "\n" + "-+-".join("-" * widths[k] for k in heads))
    for row in rows:
        print(" | ".join(str(row[k]).ljust(widths[k]) for k in heads))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m prefect_mlops.demo`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default="demo-output", help="folder for everything the demo writes")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    _reset(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect_mlops.console import embedded_api_defaults, progress_on_stderr

    embedded_api_defaults()  # a patient embedded API without telemetry; the library noise is filtered by log.py
    started = time.perf_counter()
    with progress_on_stderr():
        rows = run(home)
    print_table(rows)
    print(f"\nDone in {time.perf_counter() - started:.0f} s. Everything is under {home}:")
    print(f"  MLflow UI:       mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}")
    print(f"  drift reports:   {home / 'workspace' / 'reports' / MODEL}")
    print(f"  learned suite:   {home / 'workspace' / 'suites' / (MODEL + '.json')}")
    print(f"  Prefect runs and artifacts: PREFECT_HOME={home / 'prefect'} prefect server start  (then the UI)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
