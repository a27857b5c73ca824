"""Peak RSS and time of validate and drift-check at growing sizes, one fresh process per measurement.

    OMP_NUM_THREADS=1 python bench/stage_memory.py [--rows 1000000 5000000] [--json PATH] [--md PATH]

Data: `bench/data.py`'s generator (20 columns: a timestamp, 11 numeric, 7 categorical, the label),
reference and drifted current data, written once per size as workspace snapshots in chunks of 1M
rows (so the parent never holds the data). Each measurement is a child process that imports what
its stage needs, then runs it; the child reports its peak RSS (`VmHWM`) and the stage's wall time.

- floor: the child streams both snapshots (`iter_batches`) and counts rows: the imports, the reads;
- validate: `validate_dataset` of the current data with a suite learned from the reference (first cycle);
- drift: `check_drift` of the 18 feature columns (reference vs current).

The target: validate and drift-check under 1.5 GB peak RSS at any size.

"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data

HERE = Path(__file__).resolve().parent
TARGET_MB = 1536
CHUNK = 1_000_000
FEATURES = [*data.NUMERIC, *data.CATEGORICAL]  # 18 columns


def peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """The peak of RssAnon, polled every 5 ms: RSS less the file pages mapped in (a memory-mapped
    snapshot's pages count in RSS while mapped, but are page cache the kernel reclaims at will)."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = _status_mb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status_mb("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_mb("RssAnon"))


def snapshots(rows: int, root: Path) -> dict[str, dict]:
    """Reference and current snapshots of `rows` rows (made once, cached under `root`)."""
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.workspace import Workspace

    index = root / f"refs-{rows}-{data.GENERATOR}.json"
    if index.exists():
        refs = json.loads(index.read_text())
        if all(Path(DatasetRef(**r).uri).exists() for r in refs.values()):
            return refs
    workspace, refs = Workspace(root), {}
    for kind, drifted in (("reference", False), ("current", True)):
        writer = None
        for k, start in enumerate(range(0, rows, CHUNK)):
            table = data.make_table(min(CHUNK, rows - start), drifted=drifted, seed=data.SEED + 7919 * k)
            if writer is None:
                writer = workspace.snapshot_writer(table.schema, name=f"{kind}-{rows}").__enter__()
            for batch in table.to_batches(max_chunksize=65_536):
                writer.write(batch)
        writer.__exit__(None, None, None)
        refs[kind] = writer.ref.model_dump(mode="json")
    index.write_text(json.dumps(refs))
    return refs


def child(stage: str, root: str, refs_json: str) -> None:
    """One measurement: imports, then the stage; prints a JSON line."""
    from prefect_mlops.refs import DatasetRef
    from prefect_mlops.workspace import Workspace, iter_batches

    refs = {k: DatasetRef(**v) for k, v in json.loads(refs_json).items()}
    workspace = Workspace(root)
    if stage == "validate":
        from prefect_mlops.tasks.validate import validate_dataset
    elif stage == "drift":
        import scipy.stats  # noqa: F401
        from evidently import Report  # noqa: F401

        from prefect_mlops.tasks.drift import check_drift
    imported = peak_mb()
    anon = AnonPeak()
    start = time.perf_counter()
    detail: dict = {}
    if stage == "floor":
        detail["rows_read"] = sum(b.num_rows for ref in refs.values() for b in iter_batches(ref))
    elif stage == "validate":
        suite = workspace.folder("suites") / f"bench-{os.getpid()}.json"
        report = validate_dataset(refs["current"], reference=refs["reference"], suite_path=str(suite),
                                  warn_only=True, workspace=workspace)
        suite.unlink(missing_ok=True)
        detail = {"expectations": len(report.outcomes), "sampled": sum(bool(o.sample_rows) for o in report.outcomes),
                  "contract_failures": len(report.failures)}
    elif stage == "drift":
        report = check_drift(refs["current"], refs["reference"], model_name="bench", columns=FEATURES,
                             workspace=workspace)
        detail = {"decision": report.decision, "sampled": report.sampled,
                  "numeric_sample_rows": report.numeric_sample_rows, "drifted": len(report.drifted_columns)}
    seconds = time.perf_counter() - start
    print(json.dumps({"stage": stage, "seconds": seconds, "peak_mb": peak_mb(), "peak_anon_mb": anon.stop(),
                      "after_imports_mb": imported, **detail}))


def measure(stage: str, root: Path, refs: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", stage, "--root", str(root), "--refs",
                          json.dumps(refs)], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{stage} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--json"), parser.add_argument("--md")
    parser.add_argument("--child"), parser.add_argument("--root"), parser.add_argument("--refs")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.root, args.refs)
    root = HERE / "data" / "stage-memory"
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    results = []
    for rows in args.rows:
        refs = snapshots(rows, root)
        for stage in ("floor", "validate", "drift"):
            result = {"rows": rows, **measure(stage, root, refs)}
            results.append(result)
            print(json.dumps(result), flush=True)
    floors = {r["rows"]: r for r in results if r["stage"] == "floor"}
    lines = ["| rows | stage | peak RSS (MB) | x floor's peak | peak anonymous RSS (MB) | after imports (MB) "
             "| seconds | detail |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        detail = ", ".join(f"{k} {v}" for k, v in r.items()
                           if k not in ("rows", "stage", "peak_mb", "peak_anon_mb", "after_imports_mb", "seconds"))
        lines.append(f"| {r['rows']:,} | {r['stage']} | {r['peak_mb']:.0f} | "
                     f"{r['peak_mb'] / floors[r['rows']]['peak_mb']:.2f} | {r['peak_anon_mb']:.0f} | "
                     f"{r['after_imports_mb']:.0f} | "
                     f"{r['seconds']:.2f} | {detail} |")
    worst = max(r["peak_mb"] for r in results if r["stage"] != "floor")
    anon = max(r["peak_anon_mb"] for r in results if r["stage"] != "floor")
    lines.append(f"\nTarget: validate and drift-check under {TARGET_MB} MB at any size; worst peak RSS here "
                 f"{worst:.0f} MB ({'met' if worst < TARGET_MB else 'NOT met'}), worst peak anonymous RSS "
                 f"{anon:.0f} MB. Peak RSS "
                 "counts the pages of the memory-mapped snapshots read so far (page cache, reclaimable).")
    table = "\n".join(lines)
    print(table)
    Path(args.json or HERE / "results" / f"{stamp}-stage-memory.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.md or HERE / "results" / f"{stamp}-stage-memory.md").write_text(table + "\n")
    return None


if __name__ == "__main__":
    main()
