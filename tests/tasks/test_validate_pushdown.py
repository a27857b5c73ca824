"""The Arrow push-down in validate gives exactly the table GX gives, on clean and broken data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from prefect_mlops.tasks.validate import learn_suite, run_suite, run_suite_on_table

ROOT = Path(__file__).resolve().parents[2]


def test_pushdown_matches_gx_row_for_row_on_broken_data():
    rng = np.random.default_rng(3)
    clean = pd.DataFrame({"x": rng.normal(size=500), "n": rng.integers(0, 9, 500),
                          "c": rng.choice(["a", "b"], 500)})
    suite = learn_suite(clean, name="t")
    broken = clean.copy()
    broken.loc[:30, "x"] = np.nan
    broken.loc[40:60, "x"] = 1e6
    broken.loc[:9, "c"] = "zzz"
    for frame in (clean, broken):
        pushed = run_suite_on_table(pa.Table.from_pandas(frame, preserve_index=False), suite)
        assert pushed == run_suite(frame, suite)
    assert not all(o.passed for o in run_suite(broken, suite))


def test_equivalence_script_over_thirty_suite_and_data_cases():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gx_equivalence.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "all equal" in done.stdout
