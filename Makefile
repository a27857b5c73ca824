# The two commands a new user needs: `make demo` and `make test`. Both build their own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export GX_ANALYTICS_ENABLED ?= false

.PHONY: install demo demo-server test test-slow test-fast lint browser bench bench-quick bench-serve bench-scale bench-models backtest backtest-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch's CPU build, pinned exactly: any other spec pulls gigabytes of CUDA wheels.
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[torch,dev,backtest]"
	# ISLP only for its data files (the backtest's real streams); its declared torch/lightning pins are not wanted.
	$(PIP) install --quiet --no-deps "islp==0.6.0"
	touch $(STAMP)

# Airflow gets a venv of its own: Airflow 3.3 needs fastapi<0.137, our Prefect pin fastapi>=0.139
# (DEVELOPERS.md). It holds Airflow and this package without dependencies (the provider and its DAG
# factories); the stages run in $(VENV) through @task.external_python. Tests skip without it, but
# fail under `make test` (PREFECT_MLOPS_REQUIRE_AIRFLOW=1) or in CI: a broken install is no skip.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

$(AIRFLOW_STAMP): pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet "apache-airflow==3.3.2"
	$(AIRFLOW_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(AIRFLOW_STAMP)

install: $(STAMP) $(AIRFLOW_STAMP)

demo: $(STAMP)
	$(PY) -m prefect_mlops.demo --home demo-output

# import-linter reads packages from disk; the editable install maps tasks/, flows/ and blocks/
# through an import hook it cannot follow, so the layering is checked on a plain install.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	rm -rf build/lint && $(PIP) install --quiet --no-deps --target build/lint . >/dev/null
	cd build/lint && PYTHONPATH=. ../../$(VENV)/bin/lint-imports --config ../../pyproject.toml

# Two pytest sessions: unit and flow tests share one embedded Prefect API; system tests start
# their own Prefect server, workers, MLflow and S3 servers. `make test-fast` skips the latter;
# `make test` leaves the slowest system tests (`slow`, about 20 minutes) to `make test-slow`.
test: lint browser $(AIRFLOW_STAMP)
	PREFECT_MLOPS_REQUIRE_AIRFLOW=1 $(PY) -m pytest -q -m "not system"
	PREFECT_MLOPS_REQUIRE_AIRFLOW=1 $(PY) -m pytest -q -m "system and not slow"

# The slowest system tests (marked `slow`): CI runs them after `make test`.
test-slow: browser $(STAMP) $(AIRFLOW_STAMP)
	PREFECT_MLOPS_REQUIRE_AIRFLOW=1 $(PY) -m pytest -q -m slow

# The UI system test drives Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test-fast: lint
	$(PY) -m pytest -q -m "not system"

# make demo-server ARGS="--keep --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_demo"
demo-server: $(STAMP)
	$(PY) -m prefect_mlops.cli demo-server $(ARGS)

bench: $(STAMP)
	$(PY) bench/run.py --sizes 100000,1000000,5000000
	$(PY) bench/serve.py

# The scoring service against `mlflow models serve` on the same model: req/s, p50/p99 at 1, 8, 32 clients.
bench-serve: $(STAMP)
	$(PY) bench/serve.py

# The scale curve: every stage's time and peak RSS at 100k, 1M, 5M and 20M rows, each size in a fresh process
# (about 20 minutes; 20M rows need about 12 GB of memory and 15 GB of disk). Writes bench/README.md's scale table.
bench-scale: $(STAMP)
	$(PY) bench/scale.py --sizes 100000,1000000,5000000,20000000 --readme

# 50 models on one local Prefect server (PostgreSQL) and two process workers: drift checks per minute against two
# bare flows (drift only; same work), arms interleaved, server and worker CPU and memory, retraining on drift under
# the model lock (about 20 minutes).
bench-models: $(STAMP)
	$(PY) bench/many_models.py --models 50 --rounds 2 --segment 100 --write

bench-quick: $(STAMP)
	$(PY) bench/run.py --sizes 100000

# Every stream replayed through the flows against a static model and an oracle; results in
# bench/backtest_results/ (table, JSON, a PNG per stream). POLICY=file.json tries another retrain policy.
backtest: $(STAMP)
	$(PY) -m prefect_mlops.backtest --output bench/backtest_results $(if $(POLICY),--policy $(POLICY))

backtest-quick: $(STAMP)
	$(PY) -m prefect_mlops.backtest --quick --output build/backtest-quick $(if $(POLICY),--policy $(POLICY))

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) demo-output build *.egg-info
