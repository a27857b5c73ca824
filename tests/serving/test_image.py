"""docker/Dockerfile.serve, statically (the shared checks in tests/test_docker_static.py cover it too)."""

from __future__ import annotations

import json

from tests.test_docker_static import DOCKER, parse_dockerfile, stages

DOCKERFILE = DOCKER / "Dockerfile.serve"


def test_the_serve_image_runs_the_scoring_service_as_non_root_with_a_healthcheck():
    final = stages(parse_dockerfile(DOCKERFILE))[-1]
    by = {i["instruction"]: i["value"] for i in final}
    assert json.loads(by["ENTRYPOINT"])[:2] == ["prefect-mlops", "serve"]
    assert "/health" in by["HEALTHCHECK"] and by["EXPOSE"] == "8000"
    assert by["USER"].split(":")[0] not in ("root", "0")
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "torch" not in runs and "import prefect_mlops.serving.app" in runs
