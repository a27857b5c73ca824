"""When Evidently's HTML report is drawn: when the data drifted (default), always, or never; a plain table otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.errors import DriftCheckError
from prefect_mlops.tasks.drift import check_drift

# A stable check in a fresh process: what it imports is what a monitor's check pays for.
STABLE_CHECK = textwrap.dedent("""
    import json, sys, tempfile
    import numpy as np, pandas as pd
    from prefect_mlops.tasks.drift import check_drift
    from prefect_mlops.workspace import Workspace
    ws, rng = Workspace(tempfile.mkdtemp()), np.random.default_rng(0)
    ref = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)}), name="r")
    cur = ws.write_snapshot(pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)}), name="c")
    report = check_drift(cur, ref, model_name="m", columns=["x", "c"], workspace=ws, report=sys.argv[1])
    print(json.dumps({"decision": report.decision, "kind": report.report_kind, "rows": report.report_rows,
                      "evidently": sorted(m for m in sys.modules if m.split(".")[0] == "evidently")[:3],
                      "html": open(report.report_path, encoding="utf-8").read()}))
""")


def stable_check(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STABLE_CHECK, mode], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_stable_window_does_not_import_evidently_and_writes_the_decisions_table():
    out = stable_check("drifted")
    assert out["decision"] == "stable" and out["kind"] == "table" and out["rows"] is None
    assert out["evidently"] == []
    assert "<h1>Drift: stable</h1>" in out["html"] and "<td>x</td>" in out["html"]
    assert "drawn when the data drifted" in out["html"] and "<script" not in out["html"]


@pytest.mark.system
def test_always_draws_evidentlys_report_for_a_stable_window():
    out = stable_check("always")
    assert out["decision"] == "stable" and out["kind"] == "evidently" and out["rows"] == 2000
    assert out["evidently"] and "<h1>Drift: stable</h1>" not in out["html"] and "<script" in out["html"]


def frames(shift):
    rng = np.random.default_rng(0)
    return (pd.DataFrame({"x": rng.normal(shift, 1, 500)}), pd.DataFrame({"x": rng.normal(size=500)}))


@pytest.mark.system  # Evidently's import and drawing: 5-13 s
def test_a_drifted_window_draws_evidentlys_report(workspace):
    current, reference = (workspace.write_snapshot(f, name=n) for f, n in zip(frames(1.0), ("c", "r"), strict=True))
    report = check_drift(current, reference, model_name="m", columns=["x"], workspace=workspace)
    assert report.decision == "drifted" and report.report_kind == "evidently" and report.report_rows == 500
    page = open(report.report_path, encoding="utf-8").read()
    assert "<h1>Drift: drifted</h1>" not in page and "<script" in page  # Evidently's page draws with scripts
    never = check_drift(current, reference, model_name="m", columns=["x"], workspace=workspace, report="never")
    assert never.decision == "drifted" and never.report_kind == "table" and never.report_rows is None
    assert "<h1>Drift: drifted</h1>" in open(never.report_path, encoding="utf-8").read()


def test_an_unknown_report_mode_names_the_choices(workspace):
    current, reference = (workspace.write_snapshot(f, name=n) for f, n in zip(frames(0.0), ("c", "r"), strict=True))
    with pytest.raises(DriftCheckError, match=r"report='sometimes'; expected one of 'drifted', 'always', 'never'"):
        check_drift(current, reference, model_name="m", columns=["x"], workspace=workspace, report="sometimes")
