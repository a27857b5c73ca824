"""Where a compute label trains: a work pool, a queue and the job variables for that hardware.

`TrainerSpec.label` names a route; the continuous-training flow loads the `ComputeRoute`
block saved under that name (`ComputeRoute.load("gpu")`) and runs the `train-on-pool`
deployment on the route's pool and queue with the route's job variables.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from prefect_mlops.refs import reject_unknown_keys

TRAIN_FLOW = "train-on-pool"


class ComputeRoute(Block):
    """A compute label (`gpu`, `cpu`, `highmem`...) mapped to a work pool, a queue and job variables.

    Save one per label, named after the label; a trainer with `label="gpu"` then trains on
    the pool that the `gpu` route names. The job variables fill the pool's base job template:
    `image` and `env` work on every pool type; `cpu_request`, `memory_request` and `gpu_count`
    need a template that uses them (see `deployments/job_templates/`).

    Example:
        ```python
        from prefect_mlops.blocks import ComputeRoute
        saved = ComputeRoute.load("BLOCK_NAME")
        route = ComputeRoute(work_pool="gpu", image="prefect-mlops-worker:0.1.0-cuda", gpu_count=1,
                             env={"PREFECT_MLOPS_DEVICE": "cuda"})
        assert route.deployment_name() == "train-on-pool/gpu"
        assert route.job_variables()["gpu_count"] == 1
        ```
    """

    _block_type_name = "Compute Route"
    _block_type_slug = "prefect-mlops-compute-route"
    _logo_url = "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos/process.png"
    _documentation_url = "https://github.com/prefect-mlops/prefect-mlops#compute-routes"
    _description = "A compute label mapped to a work pool, a work queue and job variables (image, env, resources)."

    work_pool: str = Field(description="Work pool whose workers run the training, e.g. 'gpu'.")
    work_queue: str | None = Field(
        default=None, description="Queue of that pool to submit to; empty: the deployment's queue (pool default)."
    )
    deployment: str | None = Field(
        default=None,
        description="The train-on-pool deployment to run, as 'flow/deployment'; empty: 'train-on-pool/<work_pool>'.",
    )
    image: str | None = Field(
        default=None, description="Container image (Docker and Kubernetes pools), e.g. a CUDA worker image."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for the training process, e.g. PREFECT_MLOPS_DEVICE=cuda.",
    )
    cpu_request: str | None = Field(default=None, description="CPU request, Kubernetes notation, e.g. '4'.")
    memory_request: str | None = Field(default=None, description="Memory request, e.g. '16Gi'.")
    gpu_count: int | None = Field(
        default=None, ge=0, description="GPUs to request (nvidia.com/gpu on Kubernetes, device requests on Docker)."
    )
    extra_job_variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other job variables of the pool's template; they override the fields above.",
    )
    start_timeout_seconds: float = Field(
        default=300, gt=0,
        description="How long the training run may wait for a worker to pick it up before the cycle fails.",
    )
    timeout_seconds: float = Field(
        default=6 * 3600, gt=0, description="How long the training run may take once started."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Prefect's own keys (block_type_slug, _block_document_id...) travel with a saved Block.
        return reject_unknown_keys(cls, data, also=("block_type_slug",))

    @field_validator("deployment")
    @classmethod
    def _qualified(cls, value: str | None) -> str | None:
        if value is not None and value.count("/") != 1:
            raise ValueError(f"deployment {value!r}: write it as 'flow-name/deployment-name'")
        return value

    def deployment_name(self) -> str:
        """The `flow/deployment` name that `run_deployment` is given."""
        return self.deployment or f"{TRAIN_FLOW}/{self.work_pool}"

    def job_variables(self) -> dict[str, Any]:
        """The job variables this route sets; fields left empty are left to the pool's template."""
        variables: dict[str, Any] = {"image": self.image, "env": dict(self.env) or None,
                                     "cpu_request": self.cpu_request, "memory_request": self.memory_request,
                                     "gpu_count": self.gpu_count}
        return {**{k: v for k, v in variables.items() if v is not None}, **self.extra_job_variables}
