"""`python -m prefect_mlops.backtest`: the same as `prefect-mlops backtest`."""

from prefect_mlops.backtest.run import main

if __name__ == "__main__":
    raise SystemExit(main())
