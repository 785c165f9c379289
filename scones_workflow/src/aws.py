"""The AWS backend: SageMaker's built-in image classifier, its endpoint with 100 % data capture, the
CloudFormation stack (template.yaml) for the Lambdas and the state machine, test executions, teardown.

Everything goes through boto3 clients passed in by the caller, so the same functions run against
AWS or against moto / botocore stubs in the tests. (SageMaker Python SDK v3 removed `Estimator`
and `Predictor`; the requests below are the API calls those used to make.) Not run against AWS here.
"""
from __future__ import annotations

import json
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

PROJECT_DIR = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = PROJECT_DIR / "template.yaml"
ASL_PATH = PROJECT_DIR / "workflow.asl.json"
LAMBDAS_DIR = Path(__file__).resolve().parent / "lambdas"


def image_classification_uri(region: str) -> str:
    """The built-in image-classification algorithm's container for `region`."""
    from sagemaker.core import image_uris  # lazily: only AWS runs need the SDK

    return image_uris.retrieve("image-classification", region, version="1")


@dataclass
class TrainingSpec:
    job_name: str
    role_arn: str
    data_s3: str          # s3://bucket/prefix holding train/, test/, train.lst, test.lst (data.upload)
    output_s3: str
    num_training_samples: int
    epochs: int = 30
    instance_type: str = "ml.p3.2xlarge"


def training_job_request(spec: TrainingSpec, image_uri: str) -> dict:
    """create_training_job arguments for the built-in classifier on the .lst + image layout (the seed's setup)."""
    def channel(name: str, suffix: str, content_type: str) -> dict:
        return {"ChannelName": name, "ContentType": content_type, "InputMode": "File",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": f"{spec.data_s3.rstrip('/')}/{suffix}",
                                                "S3DataDistributionType": "FullyReplicated"}}}
    return {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": spec.role_arn,
        "InputDataConfig": [channel("train", "train/", "application/x-image"),
                            channel("validation", "test/", "application/x-image"),
                            channel("train_lst", "train.lst", "application/x-image"),
                            channel("validation_lst", "test.lst", "application/x-image")],
        "OutputDataConfig": {"S3OutputPath": spec.output_s3},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "HyperParameters": {"image_shape": "3,32,32", "num_classes": "2", "use_pretrained_model": "1",
                            "num_training_samples": str(spec.num_training_samples), "epochs": str(spec.epochs),
                            "mini_batch_size": "32", "learning_rate": "0.001", "augmentation_type": "crop_color"},
    }


def train(sm: Any, spec: TrainingSpec, image_uri: str, *, poll_seconds: float = 30) -> str:
    """Run the training job to completion; returns the model artefact URI (RuntimeError on failure)."""
    sm.create_training_job(**training_job_request(spec, image_uri))
    while True:
        job = sm.describe_training_job(TrainingJobName=spec.job_name)
        status = job["TrainingJobStatus"]
        if status == "Completed":
            return job["ModelArtifacts"]["S3ModelArtifacts"]
        if status in ("Failed", "Stopped"):
            raise RuntimeError(f"training job {spec.job_name} {status}: {job.get('FailureReason', 'no reason given')}")
        time.sleep(poll_seconds)


def deploy_endpoint(sm: Any, *, name: str, model_data: str, image_uri: str, role_arn: str, capture_s3: str,
                    instance_type: str = "ml.m5.xlarge") -> dict:
    """Model, endpoint config with data capture of every request (input and output), endpoint."""
    sm.create_model(ModelName=name, ExecutionRoleArn=role_arn,
                    PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data})
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                             "InstanceType": instance_type, "InitialVariantWeight": 1.0}],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": capture_s3,
                           "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                           "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}})
    return sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def build_lambda_zip(path: Path) -> Path:
    """The deployment package: the `lambdas` package (handlers `lambdas.<module>.lambda_handler`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(LAMBDAS_DIR.glob("*.py")):
            archive.write(source, f"lambdas/{source.name}")
    return path


def deploy_stack(cfn: Any, s3: Any, *, stack_name: str, code_bucket: str, endpoint_name: str,
                 threshold: float = 0.94, work_dir: Path = PROJECT_DIR / "artifacts") -> dict[str, str]:
    """Upload the Lambda zip and the ASL, create the stack, wait; returns the stack outputs."""
    code_key, definition_key = f"{stack_name}/lambdas.zip", f"{stack_name}/workflow.asl.json"
    s3.upload_file(str(build_lambda_zip(work_dir / "lambdas.zip")), code_bucket, code_key)
    s3.upload_file(str(ASL_PATH), code_bucket, definition_key)
    parameters = {"EndpointName": endpoint_name, "ThresholdConfidence": str(threshold), "CodeBucket": code_bucket,
                  "CodeKey": code_key, "DefinitionKey": definition_key}
    cfn.create_stack(StackName=stack_name, TemplateBody=TEMPLATE_PATH.read_text(), Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    cfn.get_waiter("stack_create_complete").wait(StackName=stack_name)
    outputs = cfn.describe_stacks(StackName=stack_name)["Stacks"][0].get("Outputs", [])
    return {o["OutputKey"]: o["OutputValue"] for o in outputs}


def generate_test_case(s3: Any, bucket: str, prefix: str = "test/", rng: random.Random | None = None) -> dict:
    """The seed's test-case generator: a random image from the bucket, as the workflow's input event."""
    paginator = s3.get_paginator("list_objects_v2")
    keys = [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])
            if o["Key"].lower().endswith((".png", ".jpg", ".jpeg"))]
    if not keys:
        raise FileNotFoundError(f"no images under s3://{bucket}/{prefix}")
    return {"image_data": "", "s3_bucket": bucket, "s3_key": (rng or random).choice(keys)}


def run_executions(sfn: Any, state_machine_arn: str, events: list[dict], *, timeout: float = 300,
                   poll_seconds: float = 1.0) -> list[dict]:
    """Start one execution per event, wait for all; one dict per execution (status, error, cause, output)."""
    arns = [sfn.start_execution(stateMachineArn=state_machine_arn, input=json.dumps(e))["executionArn"] for e in events]
    deadline = time.monotonic() + timeout
    results: dict[str, dict] = {}
    while len(results) < len(arns):
        for arn in arns:
            if arn not in results:
                description = sfn.describe_execution(executionArn=arn)
                if description["status"] != "RUNNING":
                    results[arn] = description
        if len(results) < len(arns):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(arns) - len(results)} execution(s) still RUNNING after {timeout} s")
            time.sleep(poll_seconds)
    return [{"s3_key": e["s3_key"], "status": results[a]["status"], "error": results[a].get("error"),
             "cause": results[a].get("cause"), "output": results[a].get("output")} for e, a in zip(events, arns)]


def _ignore_missing(call: Any, **kwargs: Any) -> bool:
    """Run a delete call; True if it deleted something, False if there was nothing to delete."""
    try:
        call(**kwargs)
        return True
    except ClientError as err:
        message = err.response["Error"].get("Message", "").lower()
        if any(text in message for text in ("could not find", "does not exist", "not found")):
            return False
        raise


def teardown(sm: Any, cfn: Any, *, endpoint_name: str, stack_name: str) -> dict[str, bool]:
    """Delete the endpoint, its config and model, and the stack; safe to run twice (the seed's cleanup).

    The stack's buckets must be empty for CloudFormation to delete them; captures are kept by design,
    so empty or retain them first."""
    deleted = {
        "endpoint": _ignore_missing(sm.delete_endpoint, EndpointName=endpoint_name),
        "endpoint_config": _ignore_missing(sm.delete_endpoint_config, EndpointConfigName=endpoint_name),
        "model": _ignore_missing(sm.delete_model, ModelName=endpoint_name),
    }
    try:
        cfn.describe_stacks(StackName=stack_name)
    except ClientError as err:
        if "does not exist" not in err.response["Error"].get("Message", ""):
            raise
        deleted["stack"] = False
    else:
        cfn.delete_stack(StackName=stack_name)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack_name)
        deleted["stack"] = True
    return deleted


def deploy_and_run(staged: Any, *, role_arn: str, bucket: str, region: str | None = None,
                   endpoint_name: str = "scones-endpoint", stack_name: str = "scones-workflow",
                   executions: int = 20, threshold: float = 0.94) -> tuple[Any, str]:
    """The notebook's AWS backend end to end: upload, train, stack, endpoint, test executions.

    Returns (one row per execution, the capture S3 prefix). Tear down with `teardown` afterwards."""
    import boto3
    import pandas as pd

    from . import data

    session = boto3.Session(region_name=region)
    sm, s3 = session.client("sagemaker"), session.client("s3")
    data_s3 = f"s3://{bucket}/scones/data"
    data.upload(staged, data_s3)
    image_uri = image_classification_uri(session.region_name)
    spec = TrainingSpec(job_name=f"{endpoint_name}-{int(time.time())}", role_arn=role_arn, data_s3=data_s3,
                        output_s3=f"s3://{bucket}/scones/models", num_training_samples=len(staged.train))
    model_data = train(sm, spec, image_uri)
    outputs = deploy_stack(session.client("cloudformation"), s3, stack_name=stack_name, code_bucket=bucket,
                           endpoint_name=endpoint_name, threshold=threshold)
    capture_s3 = f"s3://{outputs['CaptureBucketName']}/data_capture"
    deploy_endpoint(sm, name=endpoint_name, model_data=model_data, image_uri=image_uri, role_arn=role_arn,
                    capture_s3=capture_s3)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name)
    data.upload(staged, f"s3://{outputs['DataBucketName']}")  # where the serialize function may read
    events = [generate_test_case(s3, outputs["DataBucketName"]) for _ in range(executions)]
    rows = run_executions(session.client("stepfunctions"), outputs["StateMachineArn"], events)
    return pd.DataFrame(rows), capture_s3
