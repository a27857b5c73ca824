"""`prefect-mlops`: deploy the flows to a Prefect server, run a local one, or show the whole loop on it.

Thin over Prefect: work pools, queues, blocks and automations are created through Prefect's
client, deployments through `prefect deploy`, servers and workers through `prefect server start`
and `prefect worker start`. Every command prints what it created.

    prefect-mlops deploy [--config FILE] [--prefect-file FILE]   pools, queues, blocks, deployments, alerts
    prefect-mlops up [--config FILE] [--database-url URL]        a local server and one worker per pool
    prefect-mlops demo-server [--keep] [--database-url URL]      the continuous-training story on a server
    prefect-mlops backtest [--stream NAME ...] [--policy FILE]   what a retrain policy would have done on past data
    prefect-mlops repair MODEL [--tracking-uri URI]              settle an interrupted promotion of MODEL
    prefect-mlops train MODEL --data URI --target COL ...        one continuous-training run, in this process
    prefect-mlops score MODEL --data URI --output FILE           batch scoring with the champion
    prefect-mlops monitor MODEL --data URI [--retrain]           drift and performance of the champion
    prefect-mlops rollback MODEL [--reason TEXT]                 @previous-champion becomes the champion again
    prefect-mlops status MODEL                                   champion, versions, verdicts, triggers, last checks
    prefect-mlops serve MODEL [--port N] [--tracking-uri URI]    online scoring of MODEL's @champion
"""


from __future__ import annotations

import argparse
from pathlib import Path

from prefect_mlops.cli.demo_server import cmd_demo_server
from prefect_mlops.cli.deploy import (  # noqa: F401  (the public surface of the CLI, used by the system tests)
    DEFAULT_POOLS,
    MLOPS_FLOWS,
    NOTIFY_NAME,
    apply_deployments,
    cmd_deploy,
    deploy,
    find_deployments_dir,
    read_config,
    resolve,
    save_blocks,
)
from prefect_mlops.cli.processes import (  # noqa: F401
    Server,
    Stack,
    Worker,
    api,
    free_port,
    start_stack,
    stopped_on_exit,
    wait_for_workers,
    wait_forever,
)

MAIN_EXAMPLES = """examples:
  prefect-mlops train churn --data customers.csv --target churned --numeric tenure --categorical plan
  prefect-mlops status churn
  prefect-mlops up --config deployments/config.example.yaml
  prefect-mlops COMMAND --help       # every command has examples
"""

DEPLOY_EXAMPLES = """examples:
  export PREFECT_API_URL=http://127.0.0.1:4200/api      # a server: `prefect-mlops up` starts one
  prefect-mlops deploy --config deployments/config.example.yaml
  prefect-mlops deploy --prefect-file my/prefect.yaml
"""

SERVER_EXAMPLES = {
    "up": """examples:
  prefect-mlops up --config deployments/config.example.yaml
  prefect-mlops up --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/prefect   # made if missing
""",
    "demo-server": """examples:
  prefect-mlops demo-server                                 # SQLite, everything stopped at the end
  prefect-mlops demo-server --keep --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_demo
  make demo-server ARGS="--keep"
""",
}

REPAIR_EXAMPLES = """examples:
  prefect-mlops repair churn --tracking-uri http://127.0.0.1:5000
  prefect-mlops repair churn --mlflow-block default
  prefect-mlops repair churn --workspace mlops-workspace --no-lock   # no Prefect API at hand
"""

BACKTEST_EXAMPLES = """examples:
  prefect-mlops backtest --stream bikeshare --policy my-policy.json
  prefect-mlops backtest --quick --output build/backtest-quick      # every stream, fewer periods
"""


def cmd_repair(args: argparse.Namespace) -> int:
    """Settle an interrupted promotion and tag versions left by killed runs, under the model's lock."""
    from prefect_mlops.cli.preflight import prefect_api
    from prefect_mlops.cli.run import prepare

    prepare(args)
    if not args.no_lock:  # the lock lives in the Prefect API: a dead one is named before any registry write
        prefect_api("repair", required=False)
    from prefect_mlops.blocks import MlflowServer
    from prefect_mlops.tasks.reconcile import reconcile_registry
    from prefect_mlops.workspace import Workspace

    if args.mlflow_block:
        server = MlflowServer.load(args.mlflow_block)
    else:
        server = MlflowServer(tracking_uri=args.tracking_uri)
    report = reconcile_registry(args.model, mlflow_server=server, workspace=Workspace(args.workspace),
                                lock=not args.no_lock)
    print(report.summary())
    for action in report.actions:
        print(f"  - {action}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from prefect_mlops.cli.auth import resolve_auth

    home = Path(args.home).resolve()
    auth = resolve_auth(home, auth=args.auth, auth_file=args.auth_file)
    stack = start_stack(home, args.database_url, args.port, auth)
    with stopped_on_exit(stack):
        config = read_config(args.config)
        pools = list(config.get("work_pools") or DEFAULT_POOLS)
        with api(stack.server.api_url, auth):
            deploy(config, args.prefect_file, env=stack.server.client_env())
        stack.start_workers(pools, PREFECT_MLOPS_WORKSPACE=str(home / "workspace"))
        print(f"\nworkers online for pools {', '.join(pools)}")
        print(f"Prefect UI: {stack.server.ui_url}")
        print(f"export PREFECT_API_URL={stack.server.api_url}   # to use it from another shell")
        if auth:
            print("export PREFECT_API_AUTH_STRING=...   # the auth string: the API and the UI ask for it")
        print("Ctrl-C stops the server and the workers.", flush=True)
        wait_forever()
    return 0



def main(argv: list[str] | None = None) -> int:
    """Entry point of the `prefect-mlops` command."""
    from prefect_mlops import __version__
    from prefect_mlops.cli import run, status

    parser = argparse.ArgumentParser(prog="prefect-mlops", description=__doc__.split("\n\n")[0],
                                     epilog=MAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"prefect-mlops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_arguments(sub)
    status.add_arguments(sub)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML or JSON: work_pools, blocks, notifications")
        p.add_argument("--prefect-file", type=Path, help="prefect.yaml to apply (default: deployments/prefect.yaml)")

    p = sub.add_parser("deploy", help="create pools, queues and blocks, apply the deployments (PREFECT_API_URL)",
                       epilog=DEPLOY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("repair", help="settle an interrupted promotion of MODEL and tag versions left by killed runs",
                       epilog=REPAIR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered model name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)")
    p.add_argument("--mlflow-block", help="name of a saved MLflow Server block to use instead")
    p.add_argument("--workspace", help="workspace folder of the embedded MLflow store")
    p.add_argument("--no-lock", action="store_true", help="skip the model's Prefect lock (no Prefect API at hand)")
    p.set_defaults(func=cmd_repair)

    for name, func, text in (("up", cmd_up, "run a local Prefect server and one worker per work pool"),
                             ("demo-server", cmd_demo_server, "the continuous-training story on a Prefect server")):
        p = sub.add_parser(name, help=text, epilog=SERVER_EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--database-url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/prefect "
                       "(default: SQLite under --home)")
        p.add_argument("--port", type=int, help="server port (default: a free one)")
        p.add_argument("--auth", action="store_true", help="basic auth on the API and UI: 'user:password' from "
                       "$PREFECT_MLOPS_AUTH_STRING, else --auth-file, else generated into <home>/prefect/auth-string "
                       "(mode 0600)")
        p.add_argument("--auth-file", type=Path, help="file holding 'user:password' (chmod 600); implies --auth")
        if name == "up":
            common(p)
            p.add_argument("--home", default=".prefect-mlops-server", help="folder for the server and workspace")
        else:
            p.add_argument("--home", help="folder for everything the demo writes (default: a new temporary one)")
            p.add_argument("--keep", action="store_true", help="leave the server and workers running at the end")
        p.set_defaults(func=func)

    p = sub.add_parser("serve", help="serve MODEL's @champion over HTTP (canary, shadow, Prometheus metrics)")
    from prefect_mlops.cli import serve

    serve.add_arguments(p)
    p.set_defaults(func=serve.cmd_serve)

    p = sub.add_parser("backtest", help="replay past data through the flows: the policy vs a static model and "
                       "an oracle (needs the backtest extra)", epilog=BACKTEST_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    from prefect_mlops.backtest.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_backtest)

    args = parser.parse_args(argv)
    return args.func(args)


def cmd_backtest(args: argparse.Namespace) -> int:
    from prefect_mlops.backtest.run import main as backtest

    return backtest(args=args)

