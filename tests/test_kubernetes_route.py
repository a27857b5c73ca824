"""The route to Kubernetes: the job variables prefect.yaml documents for the `kubernetes` pools are variables of
deployments/job_templates/kubernetes{,-gpu}.json and land where Kubernetes reads them, rendered by Prefect's own
templating (what a worker does before it creates the Job)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from prefect.utilities.templating import apply_values

ROOT = Path(__file__).resolve().parents[1]


def render(template: dict, job_variables: dict) -> dict:
    """The pod spec a worker would submit: the template's defaults, overridden by the job variables."""
    defaults = {name: spec["default"] for name, spec in template["variables"]["properties"].items()
                if "default" in spec}
    config = apply_values(copy.deepcopy(template["job_configuration"]), {**defaults, **job_variables})
    return config["job_manifest"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(("pool", "template_file"), [("kubernetes_cpu", "kubernetes.json"),
                                                     ("kubernetes_gpu", "kubernetes-gpu.json")])
def test_prefect_yaml_job_variables_render_into_the_pod(pool, template_file):
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    variables = config["definitions"]["work_pools"][pool]["job_variables"]
    template = json.loads((ROOT / "deployments" / "job_templates" / template_file).read_text())
    undeclared = set(variables) - set(template["variables"]["properties"])
    assert not undeclared, f"{pool}: job variables {undeclared} are not variables of {template_file}"

    pod = render(template, variables)
    container = pod["containers"][0]
    assert container["image"] == variables["image"]
    assert pod["serviceAccountName"] == variables["service_account_name"]
    assert pod["nodeSelector"] == variables["node_selector"]
    assert container["resources"]["requests"]["memory"] == variables["memory_request"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "prefect-mlops-workspace"
    assert container["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
    assert container["env"]["PREFECT_MLOPS_WORKSPACE"] == "/workspace"
    # The worker image's ENTRYPOINT is `prefect worker start`; the Job runs the flow-run command instead.
    assert container["command"] == ["/usr/bin/env"]
    if "gpu_count" in variables:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == variables["gpu_count"]


@pytest.mark.parametrize("template_file", ["kubernetes.json", "kubernetes-gpu.json"])
def test_unset_placement_and_volumes_leave_the_pod_as_it_was(template_file):
    template = json.loads((ROOT / "deployments" / "job_templates" / template_file).read_text())
    pod = render(template, {"image": "prefect-mlops-worker:0.1.0-cpu"})
    assert {"nodeSelector", "volumes"}.isdisjoint(pod) and "volumeMounts" not in pod["containers"][0]
