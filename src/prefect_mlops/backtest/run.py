"""`prefect-mlops backtest`: what would this retrain policy have done over past data?

Replays each stream through the real flows on the embedded default, beside a static model and
an oracle, and writes a table, a JSON of every figure and a PNG per stream to the output folder;
each stream's store gets an MLflow run, and the table becomes a Prefect artifact.

Example:
    ```python
    from prefect_mlops.backtest.run import parse_args
    args = parse_args(["--stream", "sea_stable", "--quick"])
    assert args.stream == ["sea_stable"] and args.quick
    ```
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_mlops.errors import ConfigError

if TYPE_CHECKING:
    from prefect_mlops.backtest.replay import StreamResult
    from prefect_mlops.blocks import ModelPolicy

# Kept here, not imported from replay and streams, so that `prefect-mlops --help` imports nothing heavy;
# a test checks they match.
STREAM_NAMES = ("agrawal_abrupt", "hyperplane_gradual", "friedman_drift", "sea_covariate", "sea_stable", "bikeshare",
                "nyse", "weekly", "trump_approval")
ORACLE_WINDOW = 3  # periods the oracle refits on before each period
BAD_PROMOTION_DELTA = 0.02  # relative: a promotion is bad when the next period is >2% worse than the old champion's
DEFAULT_OUTPUT = Path("bench/backtest_results")
QUICK_SYNTHETIC = {"rows_per_period": 300, "periods": 10}
QUICK_REAL_PERIODS = {"bikeshare": 8, "nyse": 10, "weekly": 10, "trump_approval": 8}


def load_policy(path: Path | None) -> tuple[ModelPolicy | None, Any | None]:
    """A policy file: RetrainPolicy fields, or `{"retrain_policy": {...}, "model_policy": {...}}`.

    Example:
        ```python
        import json, tempfile
        from pathlib import Path
        from prefect_mlops.backtest.run import load_policy
        path = Path(tempfile.mkdtemp()) / "policy.json"
        path.write_text(json.dumps({"model_policy": {"max_drop": 0.0}}))
        gate, retrain = load_policy(path)
        assert gate.max_drop == 0.0 and retrain is None
        ```
    """
    if path is None:
        return None, None
    from pydantic import ValidationError

    from prefect_mlops.blocks import ModelPolicy

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"policy file {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"policy file {path}: expected a JSON object of RetrainPolicy fields")
    split = set(raw) <= {"retrain_policy", "model_policy"}
    retrain_fields = raw.get("retrain_policy") if split else raw
    gate_fields = raw.get("model_policy") if split else None
    try:
        gate = ModelPolicy(**gate_fields) if gate_fields is not None else None
        retrain = None
        if retrain_fields is not None:
            import prefect_mlops.blocks as blocks

            if not hasattr(blocks, "RetrainPolicy"):
                raise ConfigError(f"policy file {path}: this version has no RetrainPolicy block; give only "
                                  "'model_policy' fields")
            retrain = blocks.RetrainPolicy(**retrain_fields)
    except ValidationError as exc:
        raise ConfigError(f"policy file {path}: {exc}") from exc
    return gate, retrain


def run_backtest(
    names: list[str],
    output: Path,
    *,
    quick: bool = False,
    model_policy: ModelPolicy | None = None,
    retrain_policy: Any | None = None,
    oracle_window: int = ORACLE_WINDOW,
    delta: float = BAD_PROMOTION_DELTA,
    artifact: bool = True,
) -> list[StreamResult]:
    """Replay each named stream, writing the table, JSON and PNGs to `output` after every stream."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prefect_mlops.backtest.replay import replay_policy, stream_store
    from prefect_mlops.backtest.report import (
        log_mlflow_run,
        markdown_table,
        plot_stream,
        publish_artifact,
        stream_markdown,
        write_json,
    )
    from prefect_mlops.backtest.streams import REAL, STREAMS, load_stream

    unknown = [n for n in names if n not in STREAMS]
    if unknown:
        raise ConfigError(f"backtest streams {unknown} are unknown; choose from {', '.join(STREAMS)}")
    output.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    _prefect_ready()
    results: list[StreamResult] = []
    meta = {"quick": quick, "oracle_window": oracle_window, "bad_promotion_delta": delta}
    with Progress(TextColumn("[bold]{task.fields[stream]:<18}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console) as progress:
        for name in names:
            sizes: dict[str, int] = {}
            if quick:
                sizes = {"periods": QUICK_REAL_PERIODS[name]} if name in REAL else dict(QUICK_SYNTHETIC)
            stream = load_stream(name, **sizes)
            bar = progress.add_task("static and oracle ...", stream=name,
                                    total=stream.n_periods - stream.initial_periods)

            def tick(period: Any, bar: Any = bar) -> None:
                what = "crash" if period.crash else ("promoted" if period.promoted else
                                                     "retrained" if period.retrained else "kept")
                progress.update(bar, advance=1, description=f"period {period.period}: {what}")

            home = output / "work" / name
            result = replay_policy(stream, home, model_policy=model_policy, retrain_policy=retrain_policy,
                                   delta=delta, oracle_window=oracle_window, on_period=tick)
            results.append(result)
            progress.update(bar, description=f"gain {result.gain:.2f}" if result.gain is not None else "done")
            png = plot_stream(result, output / f"{name}.png")
            table = markdown_table(results)
            (output / "backtest.md").write_text(_document(results, table, meta))
            write_json(results, output / "backtest.json", **meta)
            own = output / "work" / f"{name}.md"
            own.write_text(stream_markdown(result))
            server, workspace = stream_store(home, name)
            log_mlflow_run(result, server=server, workspace=workspace, files=[png, own, output / "backtest.md"])
    table = markdown_table(results)
    sys.stdout.write("\n" + table)
    if artifact:
        publish_artifact(table)
    return results


def _prefect_ready() -> None:
    """Start the Prefect API (embedded, or check the configured one) before the first stream's first flow.

    Otherwise a slow start is charged to the first stream, as a crash of its first training.
    """
    from prefect import flow

    @flow(name="backtest-ready", log_prints=False)
    def ready() -> bool:
        return True

    ready()


def _document(results: list[StreamResult], table: str, meta: dict[str, Any]) -> str:
    """The markdown report: how to read it, the table, the plots, then every stream's periods."""
    from prefect_mlops.backtest.report import stream_markdown

    policy = results[0].policy if results else {}
    intro = (
        "Each period is scored by the model in force before its labels are shown. static: fitted once on the "
        f"initial periods; oracle: refitted every period on the last {meta['oracle_window']} periods; policy: the "
        "flows (`continuous_training` on the initial periods, then `drift_monitor(retrain=True)` after each "
        "period). Gain recovered = (policy - static) / (oracle - static), oriented by the metric's direction "
        "('-': the oracle is not 0.5% better than static, nothing to recover). A promotion is bad when the next "
        f"period is more than {meta['bad_promotion_delta']:.0%} worse than the previous champion on the same rows.")
    parts = ["# Backtest: policy vs static vs oracle", "", intro, "",
             f"Policy: `{json.dumps(policy, sort_keys=True)}`{' (quick sizes)' if meta['quick'] else ''}", "",
             table, *(f"![{r.name}]({r.name}.png)" for r in results), "", *(stream_markdown(r) for r in results)]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The backtest's command-line options (also the `prefect-mlops backtest` subcommand's)."""
    parser = parser or argparse.ArgumentParser(prog="prefect-mlops backtest", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", action="append", choices=STREAM_NAMES, metavar="NAME",
                        help=f"a stream to replay (repeat for several; default: all of {', '.join(STREAM_NAMES)})")
    parser.add_argument("--policy", type=Path, metavar="FILE",
                        help="JSON of RetrainPolicy fields, or {'retrain_policy': {...}, 'model_policy': {...}}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the table, JSON and PNGs")
    parser.add_argument("--quick", action="store_true", help="small sizes: fewer rows and periods (a smoke run)")
    parser.add_argument("--oracle-window", type=int, default=ORACLE_WINDOW, help="periods the oracle trains on")


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Entry point of `prefect-mlops backtest` and `python -m prefect_mlops.backtest`."""
    args = args or parse_args(argv)
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    # Quiet and self-contained like the demo: Prefect's database beside the results, library chatter off.
    if "PREFECT_HOME" not in os.environ:
        (output / "work" / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
        os.environ["PREFECT_HOME"] = str(output / "work" / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow resets its loggers' levels at import
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Prefect's 20 s default for starting the embedded API is too short on a busy 2-core machine: the first
    # flow of a stream failed with "Timed out while attempting to connect to ephemeral Prefect API server".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for noisy in ("great_expectations", "mlflow", "alembic", "evidently"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    gate, retrain = load_policy(args.policy)
    started = time.perf_counter()
    from prefect_mlops.console import progress_on_stderr

    with progress_on_stderr(stages=False):
        results = run_backtest(args.stream or list(STREAM_NAMES), output, quick=args.quick, model_policy=gate,
                               retrain_policy=retrain, oracle_window=args.oracle_window)
    sys.stdout.write(f"\n{len(results)} streams in {time.perf_counter() - started:.0f} s. Table, JSON and plots: "
                     f"{output}\n  MLflow runs of a stream: mlflow ui --backend-store-uri "
                     f"sqlite:///{output / 'work' / '<stream>' / 'mlflow.db'}\n")
    return 0
