"""`prefect-mlops train | score | monitor | rollback`: the flows, run in this process.

Thin: each command builds the flow's parameters from its options (or from saved Blocks) and
calls the flow, on the Prefect API in PREFECT_API_URL or, when none is set, on the embedded one.
`train` without a feature spec reuses the champion's recipe, as a drift retraining does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect_mlops.cli.preflight import prefect_api

EXIT_REJECTED = 3  # a verdict, not a crash; a script can still tell it from a promotion

TRAIN_EXAMPLES = """examples:
  # first training: the data, the target and the features, a gate floor
  prefect-mlops train churn --data customers.csv --target churned --numeric tenure --categorical plan \\
      --floor roc_auc=0.7 --tracking-uri sqlite:///mlflow.db --workspace mlops-workspace
  # a later window, with the champion's recipe (features, estimator, parameters)
  prefect-mlops train churn --data customers.parquet --time-column event_time \\
      --window 2024-03-01/2024-04-01 --tracking-uri sqlite:///mlflow.db --workspace mlops-workspace
  # saved Blocks instead of options
  prefect-mlops train churn --source-block churn --mlflow-block default --policy-block churn --target churned

exit status: 0 promoted or skipped (nothing new to train on), 3 rejected by the gate, 1 an error.
"""

SCORE_EXAMPLES = """examples:
  prefect-mlops score churn --data new-customers.csv --output scores.parquet \\
      --tracking-uri sqlite:///mlflow.db --workspace mlops-workspace
  prefect-mlops score churn --source-block churn --window 2024-04-01/2024-05-01 --output s3://lake/scores.parquet \\
      --alias previous-champion --mlflow-block default
"""

MONITOR_EXAMPLES = """examples:
  # drift and performance of the champion on a window; report only
  prefect-mlops monitor churn --data customers.parquet --time-column event_time --window 2024-03-01/2024-04-01 \\
      --tracking-uri sqlite:///mlflow.db --workspace mlops-workspace
  # retrain here when the retrain policy says so (the embedded API has no automations to do it)
  prefect-mlops monitor churn --source-block churn --mlflow-block default --retrain

exit status: 0 whatever the decision (it is printed), 1 an error.
"""

ROLLBACK_EXAMPLES = """examples:
  prefect-mlops rollback churn --reason "v3 mis-scores new customers" --tracking-uri sqlite:///mlflow.db \\
      --workspace mlops-workspace
  prefect-mlops rollback churn --mlflow-block default      # run it again to roll forward
"""


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """Where the MLflow registry is: a URI, a saved block, or the workspace's own SQLite store."""
    parser.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000 "
                        "(default: $MLFLOW_TRACKING_URI, else the workspace's SQLite store)")
    parser.add_argument("--mlflow-block", metavar="NAME", help="a saved MLflow Server block to use instead")
    parser.add_argument("--workspace", help="folder for snapshots, suites and reports "
                        "(default: $PREFECT_MLOPS_WORKSPACE, else ~/.prefect-mlops)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's run logs (INFO)")


def add_source_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The data: a path or URI with options, or a saved ML Data Source block."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--data", metavar="URI", help="a Parquet or CSV file: a path, file:// or s3://bucket/key")
    group.add_argument("--source-block", metavar="NAME", help="a saved ML Data Source block")
    parser.add_argument("--time-column", help="column holding each row's timestamp (needed for --window)")
    parser.add_argument("--s3-endpoint-url", help="endpoint of an S3-compatible store (credentials from "
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    parser.add_argument("--window", help="ISO-8601 interval start/end on the time column, or 'latest'")


def add_arguments(sub: Any) -> None:
    """Register train, score, monitor and rollback on the `prefect-mlops` subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a challenger and promote it only through the quality gate",
                       description="Run the continuous-training flow once, in this process.",
                       epilog=TRAIN_EXAMPLES, formatter_class=formatter)
    p.add_argument("model", help="registered model name")
    add_source_options(p)
    p.add_argument("--target", help="label column (default: the champion's feature spec)")
    p.add_argument("--numeric", type=_names, default=None, help="numeric feature columns, comma-separated")
    p.add_argument("--categorical", type=_names, default=None, help="categorical feature columns, comma-separated")
    p.add_argument("--slice-column", help="column whose values get their own metrics and floors")
    p.add_argument("--task", choices=["classification", "regression"], help="default: classification")
    p.add_argument("--estimator", help="import path, e.g. sklearn.ensemble.HistGradientBoostingClassifier "
                   "(default: the champion's, else that one)")
    p.add_argument("--params", type=_json_object, help='estimator parameters as JSON, e.g. \'{"max_iter": 200}\'')
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--policy-block", metavar="NAME", help="a saved Model Policy block")
    policy.add_argument("--floor", action="append", type=_floor, metavar="METRIC=VALUE",
                        help="a gate floor (repeatable), e.g. roc_auc=0.7")
    p.add_argument("--force", action="store_true", help="train even when data and recipe match the champion's")
    add_registry_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score rows with the champion (or another alias) into a Parquet file",
                       description="Run the batch-score flow once, in this process.",
                       epilog=SCORE_EXAMPLES, formatter_class=formatter)
    p.add_argument("model", help="registered model name")
    add_source_options(p)
    p.add_argument("--output", required=True, help="Parquet file to write: a path or s3://bucket/key")
    p.add_argument("--alias", default="champion", help="model alias to score with (default: champion)")
    add_registry_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("monitor", help="check drift and performance of the champion on a window",
                       description="Run the drift-monitor flow once, in this process.",
                       epilog=MONITOR_EXAMPLES, formatter_class=formatter)
    p.add_argument("model", help="registered model name")
    add_source_options(p)
    p.add_argument("--retrain", action="store_true", help="retrain here when the retrain policy says so")
    p.add_argument("--policy-block", metavar="NAME", help="a saved Model Policy block for the retraining's gate")
    p.add_argument("--retrain-policy-block", metavar="NAME", help="a saved Retrain Policy block")
    add_registry_options(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("rollback", help="make @previous-champion the champion again",
                       description="Run the rollback flow once, in this process.",
                       epilog=ROLLBACK_EXAMPLES, formatter_class=formatter)
    p.add_argument("model", help="registered model name")
    p.add_argument("--reason", default="", help="why; recorded with the rollback")
    add_registry_options(p)
    p.set_defaults(func=cmd_rollback)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--params {text!r} is not JSON ({exc.msg} at character {exc.pos}); "
                                         'expected an object, e.g. \'{"max_iter": 200}\'') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--params {text!r}: expected a JSON object of estimator parameters, "
                                         f'got a {type(value).__name__}, e.g. \'{{"max_iter": 200}}\'')
    return value


def _said(exc: Exception) -> str:
    """A pydantic error as `Model.field: problem` lines, without pydantic's input dump and URLs."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    return f"{exc.title}: " + "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}" for error in exc.errors())


def _floor(text: str) -> tuple[str, float]:
    metric, _, value = text.partition("=")
    try:
        return metric.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--floor {text!r}: expected METRIC=NUMBER, e.g. roc_auc=0.7") from None


def prepare(args: argparse.Namespace) -> None:
    """Before Prefect is imported: its log level (WARNING unless --verbose), a patient embedded API."""
    if not getattr(args, "verbose", False):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from prefect_mlops.console import embedded_api_defaults

    embedded_api_defaults()


def registry(args: argparse.Namespace) -> Any:
    """The MlflowServer the options name."""
    from prefect_mlops.blocks import MlflowServer

    if args.mlflow_block:
        return MlflowServer.load(args.mlflow_block)
    return MlflowServer(tracking_uri=args.tracking_uri) if args.tracking_uri else MlflowServer()


def source(args: argparse.Namespace) -> Any:
    """The DataSource the options name."""
    from prefect_mlops.blocks import DataSource

    if args.source_block:
        return DataSource.load(args.source_block)
    return DataSource(uri=args.data, time_column=args.time_column, s3_endpoint_url=args.s3_endpoint_url)


def run_flow(command: str, args: argparse.Namespace, call: Callable[[], Any]) -> Any:
    """Call a flow with progress on stderr; this package's errors and bad parameters end in one line."""
    prepare(args)
    from pydantic import ValidationError

    from prefect_mlops.console import progress_on_stderr
    from prefect_mlops.errors import MlopsError

    prefect_api(command, required=False)
    try:
        with progress_on_stderr(enabled=not args.verbose), said_once_by_the_command():
            return call()
    except (MlopsError, ValidationError, ValueError) as exc:
        from prefect.exceptions import ParameterTypeError

        if isinstance(exc, ValueError) and not isinstance(exc, (ParameterTypeError, ValidationError)):
            raise
        raise SystemExit(f"prefect-mlops {command}: {_said(exc)}") from None


class _NotOnTheConsole(logging.Filter):
    """Keeps this package's errors off the console while a command runs: its last line says them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "mlops_error", None)  # set by prefect_mlops.log.OneReportPerFailure


@contextmanager
def said_once_by_the_command() -> Iterator[None]:
    """While a flow runs for a command, its failure reaches the console once: in the command's own message.

    Only the console handlers are filtered; Prefect's API handler still records the error with the run.
    """
    quiet = _NotOnTheConsole()
    handlers = [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.StreamHandler)]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def cmd_train(args: argparse.Namespace) -> int:
    def call() -> Any:
        from prefect_mlops.blocks import ModelPolicy
        from prefect_mlops.flows import continuous_training
        from prefect_mlops.tasks.features import FeatureSpec
        from prefect_mlops.tasks.lineage import TrainerSpec, find_model
        from prefect_mlops.workspace import Workspace

        server = registry(args)
        recipe = None
        if not args.target or not args.estimator:
            champion = find_model(args.model, mlflow_server=server, workspace=Workspace(args.workspace))
            recipe = champion.lineage if champion else None
        if args.target:
            extra = {"task": args.task} if args.task else {}
            features = FeatureSpec(target=args.target, numeric=args.numeric or [],
                                   categorical=args.categorical or [], slice_column=args.slice_column,
                                   time_column=args.time_column, **extra)
        elif recipe is not None:
            features = recipe.features
        else:
            raise SystemExit(f"prefect-mlops train: {args.model!r} has no champion whose recipe could be reused; "
                             "give --target and the feature columns (--numeric, --categorical)")
        if args.estimator or recipe is None:
            trainer = TrainerSpec(**({"estimator": args.estimator} if args.estimator else {}),
                                  params=args.params or {})
        else:
            trainer = recipe.trainer if args.params is None else recipe.trainer.model_copy(
                update={"params": args.params})
        if args.policy_block:
            policy = ModelPolicy.load(args.policy_block)
        else:
            policy = ModelPolicy(floors=dict(args.floor)) if args.floor else None
        return continuous_training(args.model, source(args), features, trainer, policy=policy, window=args.window,
                                   force=args.force, mlflow_server=server, workspace=args.workspace)

    report = run_flow("train", args, call)
    print(f"{args.model}: {report.outcome}; champion v{report.champion_version or '-'}. {report.message}")
    return EXIT_REJECTED if report.outcome == "rejected" else 0


def cmd_score(args: argparse.Namespace) -> int:
    def call() -> Any:
        from prefect_mlops.flows import batch_score

        return batch_score(args.model, source(args), args.output, window=args.window, alias=args.alias,
                           mlflow_server=registry(args), workspace=args.workspace)

    result = run_flow("score", args, call)
    unseen = getattr(result, "unseen_categories", None)
    print(f"{args.model} v{result.model_version} scored {result.rows} rows -> {result.output_uri}"
          + (f"; categories the model never saw: {unseen}" if unseen else ""))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    def call() -> Any:
        from prefect_mlops.blocks import ModelPolicy, RetrainPolicy
        from prefect_mlops.flows import drift_monitor

        policy = ModelPolicy.load(args.policy_block) if args.policy_block else None
        retrain_policy = RetrainPolicy.load(args.retrain_policy_block) if args.retrain_policy_block else None
        return drift_monitor(args.model, source(args), window=args.window, retrain=args.retrain, policy=policy,
                             retrain_policy=retrain_policy, mlflow_server=registry(args), workspace=args.workspace)

    report = run_flow("monitor", args, call)
    print(f"drift:       {report.drift.decision} (share {report.drift.drift_share:.2f}): {report.drift.reason}")
    if report.performance is not None:
        print(f"performance: {report.performance.decision}: {report.performance.reason}")
    decision = report.decision
    print(f"decision:    {'retrain' if decision.retrain else 'no retraining'}"
          + (f" ({decision.trigger}, window {decision.training_window or 'all rows'})" if decision.retrain else "")
          + (f": {'; '.join(decision.reasons)}" if getattr(decision, "reasons", None) else ""))
    if report.retrain is not None:
        cycle = report.retrain
        print(f"retraining:  {cycle.outcome}; champion v{cycle.champion_version or '-'}. {cycle.message}")
    print(f"report:      {report.drift.report_path}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    def call() -> Any:
        from prefect_mlops.flows import rollback

        return rollback(args.model, reason=args.reason, mlflow_server=registry(args), workspace=args.workspace)

    promotion = run_flow("rollback", args, call)
    print(f"{args.model}: champion is v{promotion.champion_version} again (rolled back from "
          f"v{promotion.previous_version})")
    sys.stdout.flush()
    return 0
