"""What checking a model's checksums costs, as a share of loading it, for models trained on 1M rows.

    OMP_NUM_THREADS=1 python bench/checksum_cost.py [--rows 1000000] [--repeat 5] [--json PATH]

Each model is the project's pipeline (feature transform + estimator) fitted on `--rows` rows of
the demo's churn data and saved as training saves it (`_save_pipeline`: skops where it can,
else cloudpickle), with its manifest. Then, alternating, `--repeat` times after a warm-up:

- verify: `verify_folder` (SHA-256 of every file against the manifest, the manifest against its digest);
- load: MLflow's loader on the same folder (`mlflow.sklearn.load_model`, and `mlflow.pyfunc.load_model`),
  what `MlflowServer.load_model` runs after the check.

The medians and verify / load are printed. The folder is local, so download time (which the check
does not add to) is left out: the share shown is the largest it can be.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

MODELS = {
    "HistGradientBoostingClassifier (the default trainer)": (
        "sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 150, "learning_rate": 0.05}),
    "RandomForestClassifier (20 trees, depth 16)": (
        "sklearn.ensemble.RandomForestClassifier", {"n_estimators": 20, "max_depth": 16, "n_jobs": 1}),
    "KNeighborsClassifier (cloudpickle: skops cannot be told to trust it)": (
        "sklearn.neighbors.KNeighborsClassifier", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import mlflow.pyfunc
    import mlflow.sklearn
    from sklearn.pipeline import Pipeline

    from prefect_mlops.demo import make_churn_data
    from prefect_mlops.integrity import verify_folder, write_manifest
    from prefect_mlops.tasks.features import FeatureSpec, make_transform
    from prefect_mlops.tasks.lineage import TrainerSpec
    from prefect_mlops.tasks.train import _save_pipeline, build_estimator

    spec = FeatureSpec(target="churned", numeric=["tenure_months", "monthly_spend", "support_calls", "usage_hours"],
                       categorical=["plan", "channel"])
    frame = make_churn_data(0, rows=args.rows)
    x, y = frame[spec.feature_columns], frame[spec.target]
    results = {"rows": args.rows, "repeat": args.repeat, "omp_num_threads": os.environ["OMP_NUM_THREADS"],
               "models": {}}
    for label, (estimator, params) in MODELS.items():
        trainer = TrainerSpec(estimator=estimator, params=params)
        started = time.perf_counter()
        pipeline = Pipeline([("features", make_transform(spec)), ("model", build_estimator(trainer))]).fit(x, y)
        fit_seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            local = f"{folder}/model"
            fmt = _save_pipeline(pipeline, local, trainer, "bench", input_example=x.head(5))
            digest = write_manifest(local)
            size = sum(p.stat().st_size for p in Path(local).rglob("*") if p.is_file())
            times: dict[str, list[float]] = {"verify": [], "load sklearn": [], "load pyfunc": []}
            steps = {"verify": lambda local=local, digest=digest: verify_folder(local, digest, what="bench"),
                     "load sklearn": lambda local=local: mlflow.sklearn.load_model(local),
                     "load pyfunc": lambda local=local: mlflow.pyfunc.load_model(local)}
            for round_ in range(args.repeat + 1):
                for name, step in steps.items():
                    started = time.perf_counter()
                    step()
                    if round_:  # the first round warms caches and imports
                        times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        row = {"format": fmt, "bytes": size, "fit_seconds": round(fit_seconds, 1),
               **{f"{name} s": round(value, 4) for name, value in medians.items()},
               "verify / load sklearn": round(medians["verify"] / medians["load sklearn"], 4),
               "verify / load pyfunc": round(medians["verify"] / medians["load pyfunc"], 4)}
        results["models"][label] = row
        print(f"{label}: {fmt}, {size / 1e6:.1f} MB; verify {medians['verify'] * 1000:.1f} ms, load (sklearn) "
              f"{medians['load sklearn'] * 1000:.0f} ms, load (pyfunc) {medians['load pyfunc'] * 1000:.0f} ms; "
              f"verify = {row['verify / load sklearn']:.1%} of the sklearn load, "
              f"{row['verify / load pyfunc']:.1%} of the pyfunc load", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
