"""Online scoring: `prefect-mlops serve MODEL`, a FastAPI app over the registry's aliases.

`app.create_app` builds the service: `POST /predict` (validated against the model's MLflow
signature), `GET /health`, `GET /ready` and `GET /metrics` (Prometheus). `holder.ModelHolder`
follows `@champion`, `@canary` and `@shadow` and swaps versions atomically; `batcher.MicroBatcher`
groups concurrent requests into one `predict` call; `predlog.PredictionLog` writes every
prediction to Parquet off the request path. Nothing here is imported by `import prefect_mlops`.
"""
