"""Every Python snippet of README.md runs as written, each on its own: a fresh namespace per snippet (no name
carried over from the one before), in order, in one empty folder, as a reader pastes them one by one."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# A snippet for another runtime (a DAG file for Airflow's own virtual environment) is compiled, not run.
OTHER_RUNTIME = re.compile(r"^\s*(from|import) airflow\b", re.M)


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_every_python_snippet_runs_on_its_own_in_order(tmp_path, monkeypatch, capsys):
    found = snippets()
    assert len(found) >= 4, "the README lost its train, score, monitor and rollback snippets"
    monkeypatch.chdir(tmp_path)
    printed = []
    for index, code in enumerate(found):
        compiled = compile(code, f"README.md python snippet {index + 1}", "exec")
        if OTHER_RUNTIME.search(code):
            continue
        exec(compiled, {"__name__": "__main__"})  # a namespace of its own: a NameError means a missing import
        printed.append(capsys.readouterr().out)

    train, score, monitor, back = printed[:4]
    assert train.startswith("promoted 1 ")
    assert "rows scored by version 1" in score
    assert pd.read_parquet(tmp_path / "scores.parquet")["model_version"].eq("1").all()
    assert (tmp_path / "mlops-workspace" / "mlartifacts").is_dir()  # the workspace the snippets name
    # The comments in the snippets say what it prints: keep them true.
    assert "stable degraded performance" in monitor and "promoted churn v2" in monitor
    assert "champion: 1 previous: 2" in back


@pytest.mark.parametrize("marker", ["backtest", "demo"])
def test_generated_tables_keep_their_markers(marker):
    text = README.read_text()
    assert text.count(f"<!-- {marker}:start -->") == 1 and text.count(f"<!-- {marker}:end -->") == 1


def test_the_benchmark_lives_in_bench_readme_with_a_short_summary_here():
    text = README.read_text()
    assert "<!-- bench:start -->" not in text
    summary = text[text.index("### Benchmark"):].split("\n\n")[1]
    assert len(summary.splitlines()) <= 5 and "bench/README.md" in summary
    bench = (README.parent / "bench" / "README.md").read_text()
    assert bench.count("<!-- bench:start -->") == 1 and "**Targets**" in bench
