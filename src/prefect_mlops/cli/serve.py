"""`prefect-mlops serve MODEL`: the online scoring service (see `prefect_mlops.serving`)."""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "PREFECT_MLOPS_SERVE_TOKEN"  # noqa: S105 (a variable name) read from the environment: a token on the command line shows in `ps`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name; serves its @champion (and @canary, @shadow)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a "
                   "container)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)")
    p.add_argument("--mlflow-block", help="name of a saved MLflow Server block to use instead")
    p.add_argument("--workspace", help="workspace folder (embedded MLflow store, default prediction log)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often the aliases are read (default 2)")
    p.add_argument("--log-uri", help="prediction log folder or s3://bucket/prefix; 'off' for none "
                   "(default: <workspace>/predictions/<model>)")
    p.add_argument("--protect-metrics", action="store_true", help=f"/metrics needs the token (${TOKEN_ENV}) too")
    p.add_argument("--protect-health", action="store_true", help="/health and /ready need the token too")
    p.add_argument("--max-batch-rows", type=int, default=1024, help="most rows per micro-batched predict call")


def settings_from(args: argparse.Namespace):  # -> ServeSettings (imported late: the CLI starts fast)
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.serving.app import ServeSettings

    server = MlflowServer.load(args.mlflow_block) if args.mlflow_block else MlflowServer(
        tracking_uri=args.tracking_uri)
    return ServeSettings(model_name=args.model, mlflow_server=server, workspace=args.workspace,
                         poll_seconds=args.poll_seconds, token=os.environ.get(TOKEN_ENV) or None,
                         protect_metrics=args.protect_metrics, protect_health=args.protect_health,
                         log_uri=args.log_uri, max_batch_rows=args.max_batch_rows)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from prefect_mlops.serving.app import create_app

    settings = settings_from(args)
    if (args.protect_metrics or args.protect_health) and settings.token is None:
        print(f"--protect-metrics/--protect-health need a token: set ${TOKEN_ENV}")
        return 2
    print(f"serving {args.model} on http://{args.host}:{args.port} (token: "
          f"{'required' if settings.token else 'none'}); Ctrl-C stops", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
