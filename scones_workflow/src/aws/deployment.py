"""The one deploy sequence: new model -> stack -> endpoint config with data capture -> endpoint.

`deploy(session, DeployConfig(...))` is the only deploy sequence; the CLI (`python -m scones_workflow
deploy`) and the notebook (`executions.deploy_and_run`) both call it. Before it uploads or creates anything it
checks what AWS would refuse later (preflight.py: the bucket's region, the image's manifest type, quotas).
It is re-runnable:
- every run names its training job, models and endpoint config `<endpoint>-<UTC timestamp>`
  (SageMaker rejects a reused name), and uploads the Lambda zip and ASL under new keys, so
  CloudFormation sees the change;
- an existing stack is updated (`update_stack`; "No updates are to be performed" is success), a stack
  left in ROLLBACK_COMPLETE by a failed first create is deleted and created again;
- an existing endpoint is switched to the new endpoint config with `update_endpoint` (blue/green:
  SageMaker brings up the new fleet, shifts traffic, then retires the old one), never recreated, and only
  counted as done when the endpoint serves the new config (a rolled-back update is an error);
- auto scaling (scaling.py) is deregistered before an update that changes a scaled variant's instance type or
  removes it, and registered for the new variants once the endpoint is InService.

The model comes from SageMaker's built-in image classifier (a training job, as in the seed), or, with
`container=IMAGE_URI`, from this repository's ONNX model in `model.tar.gz` served by the
bring-your-own container (Dockerfile). `variants=True` puts the new model next to the one serving
now as two weighted production variants (lambdas/constants.py VARIANTS: Primary 90 %, Challenger 10 %).

Tested against moto and botocore stubs; not run against AWS here.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..lambdas.constants import DEFAULT_VARIANT, VARIANTS
from .config import DeployConfig
from .endpoint import (Fleet, Variant, create_model, describe_endpoint, endpoint_config_request, serving_model,
                       switch_endpoint, variant_fleets)
from .model_artifact import model_artifact
from .names import timestamp, versioned_name
from .preflight import check_bucket_region, check_image_manifest, check_quota
from .scaling import kept_during_update, scaled_variants, scaling_parameters, set_scaled_variants
from .stack import deploy_stack


@dataclass
class Deployment:
    stamp: str
    endpoint_name: str
    endpoint_config: str
    models: dict[str, str]            # variant -> model name
    endpoint_action: str              # created / updated / recreated
    outputs: dict[str, str] = field(default_factory=dict)
    training_job: str | None = None
    scaled: tuple[str, ...] = ()      # the variants auto scaling manages after this deploy

    @property
    def capture_s3(self) -> str:
        return self.outputs["CaptureS3Uri"]

    def summary(self) -> dict:
        return {"stamp": self.stamp, "endpoint": self.endpoint_name, "endpoint_action": self.endpoint_action,
                "endpoint_config": self.endpoint_config, "models": self.models, "training_job": self.training_job,
                "autoscaled_variants": list(self.scaled), **self.outputs}


def deploy(session: Any, config: DeployConfig, staged: Any = None, *, stamp: str | None = None,
           log: Any = print) -> Deployment:
    """The deploy sequence: new model (training job or container) -> stack (create/update) -> model(s) ->
    endpoint config with data capture -> endpoint (create or update_endpoint) -> wait until InService."""
    stamp = stamp or timestamp()
    if config.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="scones-deploy-") as work_dir:
            return deploy(session, dataclasses.replace(config, work_dir=Path(work_dir)), staged, stamp=stamp, log=log)
    sm, s3, cfn = session.client("sagemaker"), session.client("s3"), session.client("cloudformation")
    versioned_name(config.endpoint_name, stamp)  # a too-long name fails here, before anything is made
    preflight(session, config)
    previous = describe_endpoint(sm, config.endpoint_name)
    if config.variants and previous is None:
        raise ValueError(f"two variants put the new model next to the one endpoint {config.endpoint_name} serves "
                         f"now, and there is no such endpoint: deploy once without variants first")

    image_uri, model_data, job = model_artifact(session, config, stamp, staged)
    log(f"model: {model_data} ({image_uri})")
    fleet = fleet_of(config)
    names = list(VARIANTS) if config.variants else [DEFAULT_VARIANT]
    scaled_now = scaled_variants(cfn, config.stack_name)
    kept = kept_during_update(scaled_now, variant_fleets(sm, previous),
                              {n: fleet.instance_type if not fleet.memory_mb else "serverless" for n in names})
    if scaled_now != kept:
        log(f"auto scaling of {', '.join(scaled_now)} deregistered for the update (instance type or variants change)")
    outputs = deploy_stack(cfn, s3, config, stamp=stamp, scaling=scaling_parameters(config, kept))
    log(f"stack {config.stack_name}: {outputs['StackAction']}")
    new_model = create_model(sm, name=versioned_name(config.endpoint_name, stamp), image_uri=image_uri,
                             model_data=model_data, role_arn=config.role_arn)
    if config.variants:
        weights = list(VARIANTS.values())
        variants = [Variant(names[0], serving_model(sm, previous), weights[0]), Variant(names[1], new_model, weights[1])]
    else:
        variants = [Variant(DEFAULT_VARIANT, new_model, 1.0)]
    config_name = versioned_name(config.endpoint_name, stamp)
    sm.create_endpoint_config(**endpoint_config_request(config_name, variants, outputs["CaptureS3Uri"], fleet))
    action = switch_endpoint(sm, name=config.endpoint_name, config_name=config_name, retain_counts=bool(kept))
    log(f"endpoint {config.endpoint_name}: {action} -> {config_name} "
        f"({', '.join(f'{v.name} {v.weight:.0%} {v.model_name}' for v in variants)})")
    scaled = tuple(names) if config.scaled else ()
    if set_scaled_variants(cfn, config, scaled):  # registered only now: the endpoint serves these variants
        log(f"auto scaling: {', '.join(scaled) or 'off'} ({config.scaling.min_instances}-{config.scaling.max_instances} "
            f"instances, target {config.scaling.target} invocations per instance per minute)")
    return Deployment(stamp, config.endpoint_name, config_name, {v.name: v.model_name for v in variants}, action,
                      outputs, job, scaled)


def fleet_of(config: DeployConfig) -> Fleet:
    """What serves each variant: serverless, or instances starting at the scaling minimum."""
    count = config.scaling.min_instances if config.scaled else 1
    return Fleet(config.instance_type, count, config.serverless_memory_mb)


def preflight(session: Any, config: DeployConfig) -> None:
    """What AWS refuses later, refused now, before anything is uploaded or created (ValueError naming it)."""
    region = session.region_name
    check_bucket_region(session.client("s3"), config.bucket, region)
    if config.container:
        check_image_manifest(session.client("ecr"), config.container, region)
    quotas = session.client("service-quotas")
    if not config.container:
        check_quota(quotas, config.training_instance_type, "training job usage", 1)
    if not config.serverless:
        variants = len(VARIANTS) if config.variants else 1
        check_quota(quotas, config.instance_type, "endpoint usage", variants * fleet_of(config).count)
