"""The service's Prometheus metrics, on a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prefect_mlops.tasks.rollout import METRIC_LATENCY, METRIC_MODEL_ERRORS, METRIC_REQUESTS

# Sub-millisecond to seconds: a micro-batched request takes ~1 ms, a cold or overloaded one more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class ServiceMetrics:
    """Counters, histograms and gauges of one scoring service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(METRIC_REQUESTS, "Scoring requests by alias and outcome (ok, invalid, error, "
                                "fallback: the canary failed and the champion answered).", ["alias", "outcome"],
                                registry=r)
        self.latency = Histogram(METRIC_LATENCY, "Request latency in seconds, by the alias that answered.",
                                 ["alias"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_errors = Counter(METRIC_MODEL_ERRORS, "predict() calls that raised, by alias.", ["alias"],
                                    registry=r)
        self.rows = Counter("prefect_mlops_serve_rows", "Rows scored, by alias (traffic per alias).", ["alias"],
                            registry=r)
        self.batch_rows = Histogram("prefect_mlops_serve_batch_rows", "Rows per micro-batched predict call.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.predict_seconds = Histogram("prefect_mlops_serve_predict_seconds", "Time in model.predict per "
                                         "batch, by alias.", ["alias"], buckets=LATENCY_BUCKETS, registry=r)
        self.version = Gauge("prefect_mlops_serve_model_version", "Model version served under each alias "
                             "(0: none).", ["alias"], registry=r)
        self.canary_share = Gauge("prefect_mlops_serve_canary_share", "Share of keys routed to @canary.",
                                  registry=r)
        self.load_failures = Gauge("prefect_mlops_serve_load_failed", "1 while the version an alias points to "
                                   "could not be loaded (the old one keeps serving).", ["alias"], registry=r)
        self.shadow_rows = Counter("prefect_mlops_serve_shadow_rows", "Rows the shadow model scored.", registry=r)
        self.shadow_agree = Counter("prefect_mlops_serve_shadow_agree_rows", "Rows where the shadow's prediction "
                                    "equals the served one (classification) or is within 1% (regression).",
                                    registry=r)
        self.shadow_skipped = Counter("prefect_mlops_serve_shadow_skipped_rows", "Rows not shadow-scored because "
                                      "the shadow queue was full.", registry=r)
        self.log_dropped = Counter("prefect_mlops_serve_log_dropped_rows", "Prediction-log rows lost (queue full "
                                   "or write failed).", registry=r)
