"""The scoring service on a real uvicorn on 127.0.0.1, over a real MLflow registry."""

from __future__ import annotations

import threading

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefect_mlops.serving.app import canary_point
from prefect_mlops.tasks.reconcile import CANARY, CHAMPION, SHADOW
from prefect_mlops.tasks.rollout import SHARE_TAG
from tests.serving.conftest import RECORD, predict, serve, wait_for

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def second(registry) -> str:
    return registry.challenger(1)


@pytest.fixture
def reset(registry, second):
    """Every test starts from @champion v1, nothing on trial."""
    client = registry.client
    client.set_registered_model_alias("churn", CHAMPION, "1")
    for alias in (CANARY, SHADOW):
        try:
            client.delete_registered_model_alias("churn", alias)
        except Exception:
            pass
    client.set_registered_model_tag("churn", SHARE_TAG, "0")
    return registry


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_an_alias_move_is_served_within_seconds_with_no_failed_request(reset, second):
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        assert predict(client).json()["model_version"] == "1"
        answers: list[httpx.Response] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=svc.url, timeout=30) as c:
                while not stop.is_set():
                    answers.append(predict(c))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) > 20, what="traffic before the move")
        reset.client.set_registered_model_alias("churn", CHAMPION, second)
        wait_for(lambda: answers and answers[-1].json()["model_version"] == second, seconds=10,
                 what=f"v{second} served after the alias moved")
        wait_for(lambda: sum(a.json()["model_version"] == second for a in answers[-20:]) == 20, what="settled")
        stop.set()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers if a.status_code != 200] == []
    assert {a.json()["model_version"] for a in answers} == {"1", second}


def test_a_corrupt_new_version_keeps_the_old_one_serving_and_says_so(reset):
    corrupt = reset.corrupt_copy("1")
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        reset.client.set_registered_model_alias("churn", CHAMPION, corrupt)
        wait_for(lambda: CHAMPION in client.get("/health").json()["problems"], what="the load failure reported")
        health = client.get("/health").json()
        assert health["versions"][CHAMPION] == "1" and health["ready"]
        assert f"v{corrupt}" in health["problems"][CHAMPION] and "still serving v1" in health["problems"][CHAMPION]
        answers = [predict(client) for _ in range(20)]
        assert {(a.status_code, a.json()["model_version"]) for a in answers} == {(200, "1")}
        samples = metric_samples(client.get("/metrics").text)
        assert samples[("prefect_mlops_serve_load_failed", (("alias", CHAMPION),))] == 1.0
        assert samples[("prefect_mlops_serve_model_version", (("alias", CHAMPION),))] == 1.0


def test_the_canary_split_follows_the_key_hash_within_tolerance(reset, second):
    reset.client.set_registered_model_alias("churn", CANARY, second)
    reset.client.set_registered_model_tag("churn", SHARE_TAG, "0.25")
    keys = [f"customer-{i}" for i in range(2000)]
    with serve(reset) as svc:
        import asyncio

        async def send() -> list[dict]:
            limit = asyncio.Semaphore(16)
            async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
                async def one(key: str) -> dict:
                    async with limit:
                        reply = await client.post("/predict", json={"key": key, "records": [RECORD]})
                        assert reply.status_code == 200, reply.text
                        return reply.json()
                return await asyncio.gather(*(one(k) for k in keys))

        answers = asyncio.run(send())
        again = httpx.post(f"{svc.url}/predict", json={"key": keys[0], "records": [RECORD]}).json()
    on_canary = [a["alias"] == CANARY for a in answers]
    assert on_canary == [canary_point(k) < 0.25 for k in keys]  # stable: the hash decides, nothing else
    assert abs(sum(on_canary) / len(keys) - 0.25) < 0.03  # 3 standard deviations of a 2,000-key binomial
    assert {a["model_version"] for a in answers if a["alias"] == CANARY} == {second}
    assert again["alias"] == answers[0]["alias"]


def test_shadow_scores_are_logged_beside_the_served_ones(reset, second):
    reset.client.set_registered_model_alias("churn", SHADOW, second)
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        ids = [predict(client, request_id=f"r{i}").json()["request_id"] for i in range(30)]
        assert all(predict(client).json()["alias"] == CHAMPION for _ in range(3))
        wait_for(lambda: metric_samples(client.get("/metrics").text).get(
            ("prefect_mlops_serve_shadow_rows_total", ()), 0) >= 30, what="shadow scored")
        svc.service.log.flush()
        samples = metric_samples(client.get("/metrics").text)
        log_root = svc.service.log.root
    log = pd.concat(pd.read_parquet(p) for p in __import__("pathlib").Path(log_root).rglob("*.parquet"))
    shadow = log[log["role"] == "shadow"]
    assert set(ids) <= set(shadow["request_id"]) and set(shadow["model_version"]) == {second}
    assert set(shadow["alias"]) == {SHADOW} and shadow["prediction"].notna().all()
    served = log[(log["role"] == "served") & log["request_id"].isin(ids)]
    assert set(served["model_version"]) == {"1"} and (served["tenure_months"] == 12).all()
    assert samples[("prefect_mlops_serve_shadow_agree_rows_total", ())] <= samples[
        ("prefect_mlops_serve_shadow_rows_total", ())]


BAD_BODIES = [
    ({"records": [{**RECORD, "tenure_months": "twelve"}]}, "tenure_months", "got 'twelve'"),
    ({"records": [{k: v for k, v in RECORD.items() if k != "plan"}]}, "plan", "is required"),
    ({"records": [{**RECORD, "tenure_month": 3}]}, "tenure_month", "not an input of the model"),
    ({"records": [{**RECORD, "monthly_spend": True}]}, "monthly_spend", "expected a number, got True"),
    ({"records": [{**RECORD, "plan": 7}]}, "plan", "expected a string, got 7"),
    ({"columns": {**{k: [v] for k, v in RECORD.items()}, "plan": ["a", "b"]}}, "columns", "same, non-zero number"),
    ({"rows": []}, None, "expected 'records'"),
    ([1, 2], None, "expected a JSON object"),
]


def test_bad_requests_get_a_422_naming_the_field_and_never_a_500(reset):
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        replies = [(client.post("/predict", json=body), field, problem) for body, field, problem in BAD_BODIES]
        bad_json = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        still = predict(client)
    for reply, field, problem in replies:
        assert reply.status_code == 422, reply.text
        detail = reply.json()["detail"]
        assert any(d["field"] == field and problem in d["problem"] for d in detail), detail
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["message"]
    assert still.status_code == 200


def test_metrics_parse_with_prometheus_client_and_count_per_alias(reset):
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        for _ in range(5):
            predict(client)
        client.post("/predict", json={"records": [{}]})
        text = client.get("/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"prefect_mlops_serve_requests", "prefect_mlops_serve_request_seconds", "prefect_mlops_serve_model_errors",
            "prefect_mlops_serve_model_version", "prefect_mlops_serve_rows"} <= names
    samples = metric_samples(text)
    assert samples[("prefect_mlops_serve_requests_total", (("alias", CHAMPION), ("outcome", "ok")))] == 5
    assert samples[("prefect_mlops_serve_requests_total", (("alias", CHAMPION), ("outcome", "invalid")))] == 1
    assert samples[("prefect_mlops_serve_request_seconds_count", (("alias", CHAMPION),))] == 5


def test_a_bearer_token_guards_predict_and_optionally_metrics_and_health(reset):
    with serve(reset, token="s3cret-token") as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        assert predict(client).status_code == 401
        assert client.post("/predict", json={"records": [RECORD]},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/predict", json={"records": [RECORD]},
                           headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/metrics").status_code == 200 and client.get("/health").status_code == 200
    with serve(reset, token="s3cret-token", protect_metrics=True, protect_health=True) as svc, \
            httpx.Client(base_url=svc.url, timeout=30) as client:
        for path in ("/metrics", "/health", "/ready"):
            reply = client.get(path)
            assert reply.status_code == 401 and "s3cret" not in reply.text
            assert client.get(path, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_labels_joined_to_the_prediction_log_feed_the_performance_check(reset, tmp_path):
    from prefect_mlops.blocks import DataSource, RetrainPolicy
    from prefect_mlops.tasks.labels import join_labels
    from prefect_mlops.tasks.lineage import find_model
    from prefect_mlops.tasks.performance import check_performance

    data = pd.read_parquet(reset.source.uri)
    rows = data.sample(60, random_state=1)
    columns = ["tenure_months", "monthly_spend", "support_calls", "usage_hours", "plan", "channel"]
    with serve(reset) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        for i, (_, row) in enumerate(rows.iterrows()):
            record = {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in columns}
            assert client.post("/predict", json={"request_id": f"q{i}", "records": [record]}).status_code == 200
        svc.service.log.flush()
        log_root = svc.service.log.root
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [f"q{i}" for i in range(60)], "churned": rows["churned"].tolist()}).to_csv(
        labels, index=False)
    ref = join_labels(log_root, DataSource(uri=str(labels)), workspace=reset.workspace, name="churn-labelled")
    assert ref.rows >= 60 and {"churned", "prediction", "tenure_months", "model_version"} <= set(ref.columns)
    champion = find_model("churn", mlflow_server=reset.server, workspace=reset.workspace)
    report = check_performance(ref, champion, retrain_policy=RetrainPolicy(min_rows=30), mlflow_server=reset.server,
                               workspace=reset.workspace, bootstrap_samples=50, record_live=False)
    # the joined rows are the labelled window: features, target and all (a reference is the champion run's matter)
    assert report.rows >= 60 and report.decision not in ("no-labels", "not-enough-data"), report.reason
    assert report.label_drift is not None
