"""Deterministic synthetic data for the benchmark: 20 columns, numeric and categorical, a binary label.

Each file is made once and cached under `bench/data/` (gitignored). The generator is
seeded and versioned (`GENERATOR`): a change to it changes the file names, so a stale
cache is never read. `drifted=True` makes the "current" data that the drift check compares
with the reference: some covariates shift, and category shares move.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
GENERATOR = "v1"
SEED = 20240101
NUMERIC = [f"num_{i:02d}" for i in range(11)]
CATEGORIES = {  # column -> number of distinct values
    "cat_plan": 3, "cat_region": 4, "cat_channel": 5, "cat_device": 6, "cat_segment": 8, "cat_os": 10,
    "cat_country": 12,
}
CATEGORICAL = list(CATEGORIES)
TARGET = "label"
TIME = "event_time"
SLICE = "cat_region"
COLUMNS = [TIME, *NUMERIC, *CATEGORICAL, TARGET]  # 20 columns
assert len(COLUMNS) == 20


def path_for(rows: int, *, drifted: bool = False) -> Path:
    """The cached Parquet file for `rows` rows (reference data, or drifted current data)."""
    kind = "current" if drifted else "reference"
    return DATA / f"{kind}-{rows}-{GENERATOR}-s{SEED}.parquet"


def make_table(rows: int, *, drifted: bool = False, seed: int = SEED):
    """Build the table in memory (pyarrow; strings are built from codes, never as Python objects)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed + (1 if drifted else 0))
    shift = 0.35 if drifted else 0.0
    columns: dict[str, pa.Array] = {}
    start = np.datetime64("2024-01-01T00:00:00", "s")
    seconds = np.sort(rng.integers(0, 30 * 24 * 3600, rows))
    columns[TIME] = pa.array(start + seconds.astype("timedelta64[s]"), type=pa.timestamp("us"))
    logit = np.full(rows, -0.4)
    for i, name in enumerate(NUMERIC):
        kind = i % 4
        if kind == 0:
            values = rng.normal(shift * (i % 3 == 0), 1.0, rows)
        elif kind == 1:
            values = rng.lognormal(3.0 + shift * (i % 2), 0.5, rows).round(2)
        elif kind == 2:
            values = rng.poisson(2.0 + 2 * shift, rows).astype("float64")
        else:
            values = rng.uniform(0, 100, rows).round(1)
        logit += (0.35 - 0.06 * i) * (values - values.mean()) / (values.std() or 1.0)
        if i in (1, 5, 9):  # a few columns with gaps
            values[rng.random(rows) < 0.02] = np.nan
        columns[name] = pa.array(values)
    for j, (name, cardinality) in enumerate(CATEGORIES.items()):
        weights = np.linspace(1.0, 0.3, cardinality)
        if drifted and j % 2 == 0:
            weights = weights[::-1]
        codes = rng.choice(cardinality, rows, p=weights / weights.sum())
        effects = np.linspace(-0.5, 0.5, cardinality) * (1 if j % 2 else -1)
        logit += effects[codes]
        labels = pa.array([f"{name[4:]}_{k}" for k in range(cardinality)])
        columns[name] = labels.take(pa.array(codes.astype("int32")))
    columns[TARGET] = pa.array((rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64"))
    return pa.table({name: columns[name] for name in COLUMNS})


def ensure(rows: int, *, drifted: bool = False) -> Path:
    """The cached file for `rows` rows, made now if it is missing."""
    import pyarrow.parquet as pq

    path = path_for(rows, drifted=drifted)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        table = make_table(rows, drifted=drifted)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return path


def ensure_suite(rows: int) -> Path:
    """The GX suite learned (by `learn_suite`) from the reference data, cached beside it."""
    from prefect_mlops.tasks.validate import learn_suite
    from prefect_mlops.workspace import read_frame

    path = DATA / f"suite-{rows}-{GENERATOR}-s{SEED}.json"
    if not path.exists():
        from prefect_mlops.refs import DatasetRef

        ref = DatasetRef(name="bench", uri=str(ensure(rows)), fingerprint="-", rows=rows, columns={})
        suite = learn_suite(read_frame(ref), name="bench")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(suite, indent=2, default=str))
        os.replace(tmp, path)
    return path
