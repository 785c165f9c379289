"""`deploy --plan`: what a deploy would create, change and cost, from read-only calls only (Describe/List/Get,
the preflight checks, the AWS Price List API through common.aws_pricing); `teardown --plan` is teardown.teardown_plan."""
from __future__ import annotations

from typing import Any

from common.aws_pricing import HOST, PRICING_PAGE, PRICING_REGION, TRAIN, hourly_price

from ..lambdas.constants import DEFAULT_VARIANT, VARIANTS
from .config import DeployConfig
from .deployment import fleet_of, preflight
from .endpoint import describe_endpoint, variant_fleets
from .scaling import kept_during_update, scaled_variants
from .stack import describe_stack


def _price(pricing: Any, instance_type: str, region: str, use: str) -> str:
    price = hourly_price(pricing, instance_type, region, use)
    return f"${price.usd:.4f}/h on demand per instance" if price is not None else f"price: see {PRICING_PAGE}"


def deploy_plan(session: Any, config: DeployConfig, pricing: Any = None) -> list[str]:
    """What `deploy` would do, one line each, after the same preflight checks; nothing is created or changed."""
    region = session.region_name
    pricing = pricing or session.client("pricing", region_name=PRICING_REGION)
    sm, cfn = session.client("sagemaker"), session.client("cloudformation")
    preflight(session, config)
    lines = [f"preflight: bucket {config.bucket} is in {region}"
             + (f"; image {config.container} is a single-image manifest" if config.container else "")]
    if config.container:
        lines.append(f"model: upload {config.model_path.name} as model.tar.gz to s3://{config.bucket}/scones/models/")
    else:
        lines.append(f"model: upload the staged images to s3://{config.bucket}/scones/data/, train the built-in image "
                     f"classifier ({config.training_mode}, {config.epochs} epochs) on 1 x {config.training_instance_type} "
                     f"({_price(pricing, config.training_instance_type, region, TRAIN)})")
    stack = describe_stack(cfn, config.stack_name)
    lines.append(f"stack {config.stack_name}: {'update' if stack else 'create'} (3 functions with their roles, the state "
                 f"machine, data and capture buckets kept on delete, the low-confidence alarm and its topic)")
    previous = describe_endpoint(sm, config.endpoint_name)
    names = list(VARIANTS) if config.variants else [DEFAULT_VARIANT]
    fleet = fleet_of(config)
    if fleet.memory_mb:
        lines.append(f"endpoint config: {', '.join(names)} serverless, {fleet.memory_mb} MB (billed per request and "
                     f"compute time, cold starts after idle; no data capture, no auto scaling)")
    else:
        lines.append(f"endpoint config: {', '.join(names)}, each {fleet.count} x {config.instance_type} "
                     f"({_price(pricing, config.instance_type, region, HOST)}), 100% data capture")
    lines.append(f"endpoint {config.endpoint_name}: " + ("create" if previous is None else
                 f"blue/green update from {previous['EndpointConfigName']} (both fleets run while traffic moves)"))
    scaled_now = scaled_variants(cfn, config.stack_name) if stack else ()
    new = {n: "serverless" if fleet.memory_mb else config.instance_type for n in names}
    if scaled_now and kept_during_update(scaled_now, variant_fleets(sm, previous), new) != scaled_now:
        lines.append(f"auto scaling of {', '.join(scaled_now)}: deregistered before the update (instance type or "
                     f"variants change), registered again after")
    if config.scaled:
        scaling = config.scaling
        lines.append(f"auto scaling of {', '.join(names)}: {scaling.min_instances}-{scaling.max_instances} instances "
                     f"each, target {scaling.target} invocations per instance per minute, cooldowns "
                     f"{scaling.scale_out_cooldown} s out / {scaling.scale_in_cooldown} s in; at most "
                     f"{scaling.max_instances * len(names)} x {config.instance_type}")
    return lines
