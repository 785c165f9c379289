"""Application Auto Scaling of the endpoint's production variants: the scalable targets and target-tracking
policies are template.yaml's (Variant{1,2}ScalableTarget/ScalingPolicy, on when ScaledVariant1/2 name a
variant); deploy and teardown switch them by updating the stack's parameters, in AWS's documented order:

- a variant is registered only once the endpoint serves it (after InService);
- UpdateEndpoint fails when it changes the instance type of an auto-scaled variant or removes one, so those
  are deregistered first (policy deleted, target deregistered) and registered again after the update; a
  change of model only is allowed as it is
  (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-update.html);
- the update keeps the instance counts scaling has set (RetainAllVariantProperties), not InitialInstanceCount.
"""
from __future__ import annotations

from typing import Any

from .config import DeployConfig
from .stack import DEPLOY_KEYS, describe_stack, stack_parameters, wait_stack

SLOTS = ("ScaledVariant1", "ScaledVariant2")


def scaled_variants(cfn: Any, stack_name: str) -> tuple[str, ...]:
    """The variants the stack scales now (its ScaledVariant parameters)."""
    stack = describe_stack(cfn, stack_name)
    parameters = stack_parameters(stack) if stack else {}
    return tuple(v for v in (parameters.get(slot, "") for slot in SLOTS) if v)


def scaling_parameters(config: DeployConfig, variants: tuple[str, ...]) -> dict[str, str]:
    """The template's scaling parameters: `variants` scaled with config.scaling's bounds and target."""
    if len(variants) > len(SLOTS):
        raise ValueError(f"the template scales at most {len(SLOTS)} variants, not {len(variants)}")
    names = [*variants, *[""] * (len(SLOTS) - len(variants))]
    scaling = config.scaling
    return {**dict(zip(SLOTS, names)), "MinInstances": str(scaling.min_instances),
            "MaxInstances": str(scaling.max_instances), "InvocationsPerInstanceTarget": str(scaling.target),
            "ScaleInCooldownSeconds": str(scaling.scale_in_cooldown),
            "ScaleOutCooldownSeconds": str(scaling.scale_out_cooldown)}


def kept_during_update(scaled: tuple[str, ...], serving: dict[str, str], new: dict[str, str]) -> tuple[str, ...]:
    """Which of the `scaled` variants may stay registered through the update from `serving` to `new`
    ({variant: instance type}): all of them if none is removed or changes instance type, else none."""
    if any(name not in new or new[name] != serving.get(name) for name in scaled):
        return ()
    return scaled


def set_scaled_variants(cfn: Any, config: DeployConfig, variants: tuple[str, ...]) -> bool:
    """Update only the stack's scaling parameters (same template, every other parameter as it is) so that
    exactly `variants` are scaled; False if they already are."""
    stack = describe_stack(cfn, config.stack_name)
    if stack is None:
        raise RuntimeError(f"stack {config.stack_name} does not exist: deploy creates it")
    current = stack_parameters(stack)
    wanted = scaling_parameters(config, variants) if variants else dict(zip(SLOTS, ("",) * len(SLOTS)))
    if all(current.get(k) == v for k, v in wanted.items()):
        return False
    # The rest as they are: what deploy set (UsePreviousValue), the others at the template's defaults.
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in wanted.items()]
    parameters += [{"ParameterKey": k, "UsePreviousValue": True} for k in DEPLOY_KEYS if k in current]
    cfn.update_stack(StackName=config.stack_name, UsePreviousTemplate=True, Parameters=parameters,
                     Capabilities=["CAPABILITY_IAM"])
    wait_stack(cfn, "stack_update_complete", config.stack_name)
    return True
