"""The CloudFormation stack (template.yaml): the Lambda zip and the ASL uploaded under this deploy's keys,
the stack created or updated and awaited, its failures named."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from .config import PROJECT_DIR, DeployConfig
from .names import timestamp

TEMPLATE_PATH = PROJECT_DIR / "template.yaml"
ASL_PATH = PROJECT_DIR / "workflow.asl.json"
LAMBDAS_DIR = PROJECT_DIR / "src" / "lambdas"
CAPTURE_PREFIX = "data_capture"  # = template.yaml's CapturePrefix default
# The parameters deploy sets (the others keep the template's defaults).
DEPLOY_KEYS = ("EndpointName", "ThresholdConfidence", "CodeBucket", "CodeKey", "DefinitionKey", "SageMakerRoleArn",
               "CapturePrefix", "AlarmEmail")


def build_lambda_zip(path: Path) -> Path:
    """The deployment package: the `lambdas` package (handlers `lambdas.<module>.lambda_handler`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(LAMBDAS_DIR.glob("*.py")):
            archive.write(source, f"lambdas/{source.name}")
    return path


def describe_stack(cfn: Any, stack_name: str) -> dict | None:
    try:
        return cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    except ClientError as err:
        if "does not exist" in err.response["Error"].get("Message", ""):
            return None
        raise


def stack_parameters(stack: dict) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


def stack_status(cfn: Any, stack_name: str) -> str | None:
    stack = describe_stack(cfn, stack_name)
    return None if stack is None else stack["StackStatus"]


def stack_failures(cfn: Any, stack_name: str) -> list[str]:
    """`LogicalId (Type): reason` of each resource whose last event is a failure, e.g. a non-empty bucket."""
    try:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    except ClientError:
        return []
    latest: dict[str, dict] = {}
    for event in events:  # newest first
        latest.setdefault(event["LogicalResourceId"], event)
    return [f"{e['LogicalResourceId']} ({e.get('ResourceType', '?')}): {e.get('ResourceStatusReason', e['ResourceStatus'])}"
            for e in latest.values()
            if e["ResourceStatus"].endswith("FAILED") and e["LogicalResourceId"] != stack_name]


def deploy_stack(cfn: Any, s3: Any, config: DeployConfig, *, stamp: str | None = None,
                 scaling: dict[str, str] | None = None) -> dict[str, str]:
    """Upload the Lambda zip (built in `config.work_dir/<stamp>/`, default scones_workflow/artifacts/) and the
    ASL to `config.bucket` under this deploy's keys, create or update `config.stack_name`, wait; returns the
    stack outputs plus "StackAction" (created, updated, unchanged, recreated). `scaling`: the template's
    scaling parameters (scaling.scaling_parameters; default: no variant scaled)."""
    stamp = stamp or timestamp()
    stack_name, code_bucket = config.stack_name, config.bucket
    work_dir = (config.work_dir or PROJECT_DIR / "artifacts") / stamp
    code_key, definition_key = f"{stack_name}/{stamp}/lambdas.zip", f"{stack_name}/{stamp}/workflow.asl.json"
    s3.upload_file(str(build_lambda_zip(work_dir / "lambdas.zip")), code_bucket, code_key)
    s3.upload_file(str(ASL_PATH), code_bucket, definition_key)
    parameters = {"EndpointName": config.endpoint_name, "ThresholdConfidence": str(config.threshold),
                  "CodeBucket": code_bucket, "CodeKey": code_key, "DefinitionKey": definition_key,
                  "SageMakerRoleArn": config.role_arn, "CapturePrefix": CAPTURE_PREFIX, "AlarmEmail": config.alarm_email,
                  **(scaling or {})}
    request = {"StackName": stack_name, "TemplateBody": TEMPLATE_PATH.read_text(), "Capabilities": ["CAPABILITY_IAM"],
               "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]}
    status = stack_status(cfn, stack_name)
    action = "created"
    if status == "ROLLBACK_COMPLETE":  # a failed first create: it can only be deleted (RetainExceptOnCreate: no buckets left)
        cfn.delete_stack(StackName=stack_name)
        wait_stack(cfn, "stack_delete_complete", stack_name)
        status, action = None, "recreated"
    if status is not None and (status.endswith("_IN_PROGRESS") or status in ("DELETE_FAILED",)):
        raise RuntimeError(f"stack {stack_name} is {status}: wait for it to finish (or run teardown) and deploy again")
    if status is None:
        cfn.create_stack(**request)
        wait_stack(cfn, "stack_create_complete", stack_name)
    else:
        try:
            cfn.update_stack(**request)
            action = "updated"
        except ClientError as err:
            if "No updates are to be performed" not in err.response["Error"].get("Message", ""):
                raise
            action = "unchanged"
        else:
            wait_stack(cfn, "stack_update_complete", stack_name)
    outputs = cfn.describe_stacks(StackName=stack_name)["Stacks"][0].get("Outputs", [])
    return {**{o["OutputKey"]: o["OutputValue"] for o in outputs}, "StackAction": action}


def wait_stack(cfn: Any, waiter: str, stack_name: str) -> None:
    try:
        cfn.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    except WaiterError as err:
        reasons = stack_failures(cfn, stack_name)
        raise RuntimeError(f"stack {stack_name}: {waiter} failed ({err}); "
                           f"{'; '.join(reasons) or 'no failed resource reported'}") from None
