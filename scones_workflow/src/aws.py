"""The AWS backend: one deploy sequence (model -> stack -> endpoint), test executions, teardown.

`deploy(session, DeployConfig(...))` is the only deploy sequence; the CLI (`python -m scones_workflow
deploy`) and the notebook (`deploy_and_run`) both call it. It is re-runnable:
- every run names its training job, models and endpoint config `<endpoint>-<UTC timestamp>`
  (SageMaker rejects a reused name), and uploads the Lambda zip and ASL under new keys, so
  CloudFormation sees the change;
- an existing stack is updated (`update_stack`; "No updates are to be performed" is success), a stack
  left in ROLLBACK_COMPLETE by a failed first create is deleted and created again;
- an existing endpoint is switched to the new endpoint config with `update_endpoint` (blue/green:
  SageMaker brings up the new fleet, shifts traffic, then retires the old one), never recreated.

The model comes from SageMaker's built-in image classifier (a training job, as in the seed), or, with
`container=IMAGE_URI`, from this repository's ONNX model in `model.tar.gz` served by the
bring-your-own container (Dockerfile). `variants=True` puts the new model next to the one serving
now as two weighted production variants (lambdas/constants.py VARIANTS: Primary 90 %, Challenger 10 %).

Every function takes boto3 clients (or a boto3 Session), so the same code runs against AWS or against
moto / botocore stubs in the tests. (SageMaker Python SDK v3 removed `Estimator` and `Predictor`; the
requests below are the API calls those made.) Not run against AWS here.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from .lambdas.constants import CLASS_NAMES, DEFAULT_VARIANT, THRESHOLD, VARIANTS

PROJECT_DIR = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = PROJECT_DIR / "template.yaml"
ASL_PATH = PROJECT_DIR / "workflow.asl.json"
LAMBDAS_DIR = Path(__file__).resolve().parent / "lambdas"
DEFAULT_MODEL = PROJECT_DIR / "models" / "scones_classifier.onnx"
CAPTURE_PREFIX = "data_capture"  # = template.yaml's CapturePrefix default
NAME_LIMIT = 63                  # SageMaker's limit for job, model, config and endpoint names


# ---------------------------------------------------------------------------- names
def timestamp(now: dt.datetime | None = None) -> str:
    """UTC to the millisecond, e.g. 20261122-041503-123: sorts in time order, unique per deploy."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


STAMP_PATTERN = r"\d{8}-\d{6}-\d{3}"


def versioned_name(base: str, stamp: str) -> str:
    """`<base>-<stamp>`: the name of this deploy's training job, model and endpoint config."""
    name = f"{base}-{stamp}"
    if len(name) > NAME_LIMIT or not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", name):
        raise ValueError(f"SageMaker name {name!r} is invalid or longer than {NAME_LIMIT} characters: "
                         f"use a shorter --endpoint-name (at most {NAME_LIMIT - len(stamp) - 1} characters)")
    return name


def _is_ours(name: str, endpoint_name: str) -> bool:
    """A model or endpoint config that deploy made for this endpoint (or the seed's fixed name)."""
    return name == endpoint_name or re.fullmatch(re.escape(endpoint_name) + "-" + STAMP_PATTERN, name) is not None


# ---------------------------------------------------------------------------- training (built-in algorithm)
def image_classification_uri(region: str) -> str:
    """The built-in image-classification algorithm's container for `region`."""
    from sagemaker.core import image_uris  # lazily: only AWS runs need the SDK

    return image_uris.retrieve("image-classification", region, version="1")


# Hyperparameters of the built-in image classifier, as its documentation requires
# (https://docs.aws.amazon.com/sagemaker/latest/dg/IC-Hyperparameter.html):
# - use_pretrained_model=1 loads the ImageNet ResNet "with the corresponding number of layers" and
#   re-initialises only the top FC layer; "Pretrained models can only use a fixed height x width image
#   size of 224 x 224" (image_shape), and "for transfer learning, num_layers ... can only be selected from
#   [18, 34, 50, 101, 152, 200]".
# - resize is "Required when using image content types" (our channels are application/x-image + .lst):
#   the shortest side is resized to it, then the augmenter crops image_shape out of it, so it must be
#   larger than image_shape's side (CIFAR's 32 px images are upscaled to 256, then cropped to 224).
# - From scratch (the seed's other option) at CIFAR's 32 px, the docs suggest num_layers from
#   [20, 32, 44, 56, 110] for small images; resize 32 keeps the images as they are.
PRETRAINED_LAYERS = {18, 34, 50, 101, 152, 200}
SMALL_IMAGE_LAYERS = {20, 32, 44, 56, 110}
HYPERPARAMETERS = {
    "pretrained": {"use_pretrained_model": "1", "image_shape": "3,224,224", "resize": "256", "num_layers": "18"},
    "scratch": {"use_pretrained_model": "0", "image_shape": "3,32,32", "resize": "32", "num_layers": "20"},
}


def check_hyperparameters(hp: dict[str, str]) -> None:
    """ValueError naming the rule of the algorithm's documentation that `hp` breaks."""
    channels, height, width = (int(v) for v in hp["image_shape"].split(","))
    layers, pretrained = int(hp["num_layers"]), hp.get("use_pretrained_model", "0") == "1"
    if "resize" not in hp:
        raise ValueError("resize is required when training on image content types (application/x-image)")
    resize = int(hp["resize"])
    if pretrained:
        if (height, width) != (224, 224):
            raise ValueError(f"use_pretrained_model=1 needs image_shape 3,224,224, got {hp['image_shape']}")
        if layers not in PRETRAINED_LAYERS:
            raise ValueError(f"use_pretrained_model=1 needs num_layers in {sorted(PRETRAINED_LAYERS)}, got {layers}")
        if resize <= max(height, width):
            raise ValueError(f"resize ({resize}) must be larger than image_shape's {height} x {width} for pretrained")
    elif layers not in PRETRAINED_LAYERS | SMALL_IMAGE_LAYERS:
        raise ValueError(f"num_layers {layers} is not one the algorithm builds")
    if resize < max(height, width):
        raise ValueError(f"resize ({resize}) is smaller than image_shape's {height} x {width}: nothing to crop")
    if channels != 3:
        raise ValueError(f"image_shape must have 3 channels (RGB), got {channels}")


@dataclass
class TrainingSpec:
    job_name: str
    role_arn: str
    data_s3: str          # s3://bucket/prefix holding train/, test/, train.lst, test.lst (data.upload)
    output_s3: str
    num_training_samples: int
    epochs: int = 30
    instance_type: str = "ml.p3.2xlarge"
    mode: str = "pretrained"  # or "scratch": see HYPERPARAMETERS


def training_job_request(spec: TrainingSpec, image_uri: str) -> dict:
    """create_training_job arguments for the built-in classifier on the .lst + image layout (the seed's setup)."""
    def channel(name: str, suffix: str, content_type: str) -> dict:
        return {"ChannelName": name, "ContentType": content_type, "InputMode": "File",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": f"{spec.data_s3.rstrip('/')}/{suffix}",
                                                "S3DataDistributionType": "FullyReplicated"}}}
    hyperparameters = {**HYPERPARAMETERS[spec.mode], "num_classes": str(len(CLASS_NAMES)),
                       "num_training_samples": str(spec.num_training_samples), "epochs": str(spec.epochs),
                       "mini_batch_size": "32", "learning_rate": "0.001", "augmentation_type": "crop_color"}
    check_hyperparameters(hyperparameters)
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
        "HyperParameters": hyperparameters,
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


# ---------------------------------------------------------------------------- bring-your-own container
def package_model(onnx_path: Path, out_dir: Path) -> Path:
    """`model.tar.gz` for the container: SageMaker unpacks the archive into /opt/ml/model/, so the ONNX file
    sits at its root as `model.onnx` (the Dockerfile's SCONES_MODEL) next to `metadata.json`, a readable copy
    of the metadata embedded in the ONNX file (class names, input, normalisation, training run)."""
    from common.serving import read_metadata  # lazily: ONNX only for this path

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {onnx_path}: train one or pass --model")
    metadata = read_metadata(onnx_path)
    names = tuple(metadata.get("class_names") or ())
    if names != CLASS_NAMES:
        raise ValueError(f"{onnx_path}: metadata class_names {list(names)} != the workflow's {list(CLASS_NAMES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "metadata.json"
    meta_path.write_text(json.dumps(metadata, indent=2, sort_keys=True))
    archive = out_dir / "model.tar.gz"

    def reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o644
        return info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(onnx_path, arcname="model.onnx", filter=reproducible)
        tar.add(meta_path, arcname="metadata.json", filter=reproducible)
    return archive


# ---------------------------------------------------------------------------- endpoint
@dataclass
class Variant:
    name: str
    model_name: str
    weight: float


def create_model(sm: Any, *, name: str, image_uri: str, model_data: str, role_arn: str) -> str:
    sm.create_model(ModelName=name, ExecutionRoleArn=role_arn,
                    PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data})
    return name


def endpoint_config_request(name: str, variants: list[Variant], capture_s3: str,
                            instance_type: str = "ml.m5.xlarge") -> dict:
    """Production variants (weights are relative) and data capture of every request, input and output."""
    return {
        "EndpointConfigName": name,
        "ProductionVariants": [{"VariantName": v.name, "ModelName": v.model_name, "InitialInstanceCount": 1,
                                "InstanceType": instance_type, "InitialVariantWeight": float(v.weight)}
                               for v in variants],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": capture_s3,
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}},
    }


def describe_endpoint(sm: Any, name: str) -> dict | None:
    """The endpoint's description, or None if there is none."""
    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as err:
        if _missing(err):
            return None
        raise


def serving_model(sm: Any, endpoint: dict) -> str:
    """The model the endpoint's first (or Primary) variant serves now."""
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = {v["VariantName"]: v["ModelName"] for v in config["ProductionVariants"]}
    first = next(iter(VARIANTS))
    return variants.get(first) or next(iter(variants.values()))


def switch_endpoint(sm: Any, *, name: str, config_name: str, wait: bool = True) -> str:
    """Create the endpoint, or move an existing one to `config_name` with update_endpoint (blue/green).
    Returns "created", "updated" or "recreated" (a Failed endpoint cannot be updated, only replaced)."""
    current = describe_endpoint(sm, name)
    action = "created"
    if current is not None and current["EndpointStatus"] == "Failed":
        sm.delete_endpoint(EndpointName=name)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name)
        current, action = None, "recreated"
    if current is None:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name)
    else:
        if current["EndpointStatus"] in ("Creating", "Updating", "SystemUpdating", "RollingBack"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
        sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name)
        action = "updated"
    if wait:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
    return action


# ---------------------------------------------------------------------------- stack
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


def deploy_stack(cfn: Any, s3: Any, *, stack_name: str, code_bucket: str, endpoint_name: str, role_arn: str,
                 stamp: str | None = None, threshold: float = THRESHOLD, alarm_email: str = "",
                 work_dir: Path = PROJECT_DIR / "artifacts") -> dict[str, str]:
    """Upload the Lambda zip and the ASL under this deploy's keys, create or update the stack, wait;
    returns the stack outputs plus "StackAction" (created, updated, unchanged, recreated)."""
    stamp = stamp or timestamp()
    code_key, definition_key = f"{stack_name}/{stamp}/lambdas.zip", f"{stack_name}/{stamp}/workflow.asl.json"
    s3.upload_file(str(build_lambda_zip(work_dir / "lambdas.zip")), code_bucket, code_key)
    s3.upload_file(str(ASL_PATH), code_bucket, definition_key)
    parameters = {"EndpointName": endpoint_name, "ThresholdConfidence": str(threshold), "CodeBucket": code_bucket,
                  "CodeKey": code_key, "DefinitionKey": definition_key, "SageMakerRoleArn": role_arn,
                  "CapturePrefix": CAPTURE_PREFIX, "AlarmEmail": alarm_email}
    request = {"StackName": stack_name, "TemplateBody": TEMPLATE_PATH.read_text(), "Capabilities": ["CAPABILITY_IAM"],
               "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]}
    status = stack_status(cfn, stack_name)
    action = "created"
    if status == "ROLLBACK_COMPLETE":  # a failed first create: it can only be deleted (its buckets are retained)
        cfn.delete_stack(StackName=stack_name)
        _wait_stack(cfn, "stack_delete_complete", stack_name)
        status, action = None, "recreated"
    if status is not None and (status.endswith("_IN_PROGRESS") or status in ("DELETE_FAILED",)):
        raise RuntimeError(f"stack {stack_name} is {status}: wait for it to finish (or run teardown) and deploy again")
    if status is None:
        cfn.create_stack(**request)
        _wait_stack(cfn, "stack_create_complete", stack_name)
    else:
        try:
            cfn.update_stack(**request)
            action = "updated"
        except ClientError as err:
            if "No updates are to be performed" not in err.response["Error"].get("Message", ""):
                raise
            action = "unchanged"
        else:
            _wait_stack(cfn, "stack_update_complete", stack_name)
    outputs = cfn.describe_stacks(StackName=stack_name)["Stacks"][0].get("Outputs", [])
    return {**{o["OutputKey"]: o["OutputValue"] for o in outputs}, "StackAction": action}


def _wait_stack(cfn: Any, waiter: str, stack_name: str) -> None:
    try:
        cfn.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    except WaiterError as err:
        reasons = stack_failures(cfn, stack_name)
        raise RuntimeError(f"stack {stack_name}: {waiter} failed ({err}); "
                           f"{'; '.join(reasons) or 'no failed resource reported'}") from None


# ---------------------------------------------------------------------------- the deploy sequence
@dataclass
class DeployConfig:
    role_arn: str
    bucket: str                       # your bucket: training data, model artefacts, deployment code
    endpoint_name: str = "scones-endpoint"
    stack_name: str = "scones-workflow"
    threshold: float = THRESHOLD
    container: str | None = None      # ECR image URI of the bring-your-own container; None: built-in algorithm
    model_path: Path = DEFAULT_MODEL  # the ONNX model the container serves
    variants: bool = False            # two weighted variants: what serves now (Primary) + the new model
    training_mode: str = "pretrained"
    epochs: int = 30
    training_instance_type: str = "ml.p3.2xlarge"
    instance_type: str = "ml.m5.xlarge"
    alarm_email: str = ""
    work_dir: Path | None = None      # where model.tar.gz and lambdas.zip are built (default: a temporary folder)


@dataclass
class Deployment:
    stamp: str
    endpoint_name: str
    endpoint_config: str
    models: dict[str, str]            # variant -> model name
    endpoint_action: str              # created / updated / recreated
    outputs: dict[str, str] = field(default_factory=dict)
    training_job: str | None = None

    @property
    def capture_s3(self) -> str:
        return self.outputs["CaptureS3Uri"]

    def summary(self) -> dict:
        return {"stamp": self.stamp, "endpoint": self.endpoint_name, "endpoint_action": self.endpoint_action,
                "endpoint_config": self.endpoint_config, "models": self.models, "training_job": self.training_job,
                **self.outputs}


def model_artifact(sm: Any, s3: Any, config: DeployConfig, stamp: str, staged: Any = None) -> tuple[str, str, str | None]:
    """(image URI, model data URI, training job name) for this deploy's new model."""
    if config.container:
        archive = package_model(config.model_path, config.work_dir / stamp)
        key = f"scones/models/{stamp}/model.tar.gz"
        s3.upload_file(str(archive), config.bucket, key)
        return config.container, f"s3://{config.bucket}/{key}", None
    from . import data

    if staged is None:
        raise ValueError("the built-in algorithm trains on staged data: pass staged=data.stage(...)")
    data_s3 = f"s3://{config.bucket}/scones/data"
    data.upload(staged, data_s3)
    region = sm.meta.region_name
    image_uri = image_classification_uri(region)
    spec = TrainingSpec(job_name=versioned_name(config.endpoint_name, stamp), role_arn=config.role_arn,
                        data_s3=data_s3, output_s3=f"s3://{config.bucket}/scones/models",
                        num_training_samples=len(staged.train), epochs=config.epochs,
                        instance_type=config.training_instance_type, mode=config.training_mode)
    return image_uri, train(sm, spec, image_uri), spec.job_name


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
    previous = describe_endpoint(sm, config.endpoint_name)
    if config.variants and previous is None:
        raise ValueError(f"two variants put the new model next to the one endpoint {config.endpoint_name} serves "
                         f"now, and there is no such endpoint: deploy once without variants first")

    image_uri, model_data, job = model_artifact(sm, s3, config, stamp, staged)
    log(f"model: {model_data} ({image_uri})")
    outputs = deploy_stack(cfn, s3, stack_name=config.stack_name, code_bucket=config.bucket,
                           endpoint_name=config.endpoint_name, role_arn=config.role_arn, stamp=stamp,
                           threshold=config.threshold, alarm_email=config.alarm_email,
                           work_dir=config.work_dir / stamp)
    log(f"stack {config.stack_name}: {outputs['StackAction']}")
    new_model = create_model(sm, name=versioned_name(config.endpoint_name, stamp), image_uri=image_uri,
                             model_data=model_data, role_arn=config.role_arn)
    if config.variants:
        (primary, primary_weight), (challenger, challenger_weight) = VARIANTS.items()
        variants = [Variant(primary, serving_model(sm, previous), primary_weight),
                    Variant(challenger, new_model, challenger_weight)]
    else:
        variants = [Variant(DEFAULT_VARIANT, new_model, 1.0)]
    config_name = versioned_name(config.endpoint_name, stamp)
    sm.create_endpoint_config(**endpoint_config_request(config_name, variants, outputs["CaptureS3Uri"],
                                                        config.instance_type))
    action = switch_endpoint(sm, name=config.endpoint_name, config_name=config_name)
    log(f"endpoint {config.endpoint_name}: {action} -> {config_name} "
        f"({', '.join(f'{v.name} {v.weight:.0%} {v.model_name}' for v in variants)})")
    return Deployment(stamp, config.endpoint_name, config_name, {v.name: v.model_name for v in variants}, action,
                      outputs, job)


# ---------------------------------------------------------------------------- executions
def generate_test_case(s3: Any, bucket: str, prefix: str = "test/", rng: random.Random | None = None) -> dict:
    """The seed's test-case generator: a random image from the bucket, as the workflow's input event."""
    paginator = s3.get_paginator("list_objects_v2")
    keys = [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])
            if o["Key"].lower().endswith((".png", ".jpg", ".jpeg"))]
    if not keys:
        raise FileNotFoundError(f"no images under s3://{bucket}/{prefix}")
    return {"image_data": "", "s3_bucket": bucket, "s3_key": (rng or random).choice(keys)}


EXECUTION_COLUMNS = ["s3_key", "status", "predicted_label", "confidence", "error", "cause", "latency_ms",
                     "execution_arn", "variant"]


def execution_row(event: dict, arn: str, description: dict, latency_ms: float) -> dict:
    """One execution as the local backend reports it (workflow.ExecutionResult's columns), plus the variant."""
    label = confidence = variant = None
    if description["status"] == "SUCCEEDED":
        body = json.loads(description["output"])["body"]
        inferences = body["inferences"]
        best = max(range(len(inferences)), key=inferences.__getitem__)
        label = CLASS_NAMES[best] if best < len(CLASS_NAMES) else str(best)
        confidence, variant = float(inferences[best]), body.get("variant")
    return {"s3_key": event["s3_key"], "status": description["status"], "predicted_label": label,
            "confidence": confidence, "error": description.get("error"), "cause": description.get("cause"),
            "latency_ms": round(latency_ms, 1), "execution_arn": arn, "variant": variant}


def run_executions(sfn: Any, state_machine_arn: str, events: list[dict], *, timeout: float = 300,
                   poll_seconds: float = 1.0) -> list[dict]:
    """Start one execution per event, wait for all; one row per execution (`execution_row`). The latency
    comes from the executions' own start and stop dates, not from this polling loop."""
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

    def latency(d: dict) -> float:
        start, stop = d.get("startDate"), d.get("stopDate")
        return (stop - start).total_seconds() * 1000 if start and stop else float("nan")

    return [execution_row(e, a, results[a], latency(results[a])) for e, a in zip(events, arns)]


def deploy_and_run(staged: Any, *, role_arn: str, bucket: str, region: str | None = None,
                   endpoint_name: str = "scones-endpoint", stack_name: str = "scones-workflow",
                   executions: int = 20, threshold: float = THRESHOLD, container: str | None = None,
                   session: Any = None) -> tuple[Any, str]:
    """The notebook's AWS backend end to end: `deploy`, then test executions on the stack's data bucket.

    Returns (one row per execution, the capture S3 prefix). Tear down with `teardown` afterwards."""
    import boto3
    import pandas as pd

    from . import data

    session = session or boto3.Session(region_name=region)
    deployment = deploy(session, DeployConfig(role_arn=role_arn, bucket=bucket, endpoint_name=endpoint_name,
                                              stack_name=stack_name, threshold=threshold, container=container),
                        staged)
    outputs = deployment.outputs
    data.upload(staged, f"s3://{outputs['DataBucketName']}")  # where the serialize function may read
    s3 = session.client("s3")
    events = [generate_test_case(s3, outputs["DataBucketName"]) for _ in range(executions)]
    rows = run_executions(session.client("stepfunctions"), outputs["StateMachineArn"], events)
    return pd.DataFrame(rows, columns=EXECUTION_COLUMNS), deployment.capture_s3


# ---------------------------------------------------------------------------- teardown
def _missing(err: ClientError) -> bool:
    message = err.response["Error"].get("Message", "").lower()
    code = err.response["Error"].get("Code", "")
    return code in ("NoSuchBucket", "404", "NotFound", "ResourceNotFound") or any(
        text in message for text in ("could not find", "does not exist", "not found"))


def _stack_buckets(cfn: Any, s3: Any, stack_name: str) -> list[str]:
    """The stack's buckets: from its resources while it exists, else by CloudFormation's generated names
    (`<stack>-<logicalid>-<random>`, lower case), which outlive the stack since both buckets are retained."""
    names: set[str] = set()
    try:
        resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        names |= {r["PhysicalResourceId"] for r in resources
                  if r.get("ResourceType") == "AWS::S3::Bucket" and r.get("PhysicalResourceId")}
    except ClientError as err:
        if not _missing(err):
            raise
    prefixes = tuple(f"{stack_name}-{logical}-".lower() for logical in ("DataBucket", "CaptureBucket"))
    names |= {b["Name"] for b in s3.list_buckets().get("Buckets", []) if b["Name"].startswith(prefixes)}
    return sorted(names)


def _count_objects(s3: Any, bucket: str) -> int:
    """Object versions and delete markers: what stops CloudFormation (and delete_bucket) from deleting it."""
    paginator = s3.get_paginator("list_object_versions")
    return sum(len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
               for page in paginator.paginate(Bucket=bucket))


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker (a versioned bucket is only empty then); returns the count."""
    deleted = 0
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            response = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise RuntimeError(f"s3://{bucket}: could not delete {len(response['Errors'])} object(s), e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
            deleted += len(keys[start:start + 1000])
    return deleted


@dataclass
class TeardownReport:
    deleted: list[str] = field(default_factory=list)   # what this run deleted
    kept: dict[str, str] = field(default_factory=dict)  # what is left, and why
    failed: dict[str, str] = field(default_factory=dict)  # what could not be deleted, and why

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        return {"deleted": self.deleted, "kept": self.kept, "failed": self.failed}

    def lines(self) -> list[str]:
        out = [f"deleted {item}" for item in self.deleted] or ["nothing to delete"]
        out += [f"kept {item}: {why}" for item, why in self.kept.items()]
        out += [f"FAILED {item}: {why}" for item, why in self.failed.items()]
        return out


def teardown(sm: Any, cfn: Any, s3: Any, *, endpoint_name: str, stack_name: str,
             delete_data: bool = False) -> TeardownReport:
    """Delete the endpoint, every endpoint config and model deploy made for it, and the stack. The buckets
    are retained (DeletionPolicy: Retain) and reported with their object counts, unless `delete_data`:
    then every object version is deleted and the buckets with them. Running it again is a no-op."""
    report = TeardownReport()
    if _delete(sm.delete_endpoint, EndpointName=endpoint_name):
        report.deleted.append(f"endpoint {endpoint_name}")
        try:
            sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint_name)
        except WaiterError as err:
            report.failed[f"endpoint {endpoint_name}"] = f"still not deleted: {err}"
    configs = [c["EndpointConfigName"] for c in _list(sm.list_endpoint_configs, "EndpointConfigs", endpoint_name)]
    for name in configs:
        if _is_ours(name, endpoint_name) and _delete(sm.delete_endpoint_config, EndpointConfigName=name):
            report.deleted.append(f"endpoint config {name}")
    for name in [m["ModelName"] for m in _list(sm.list_models, "Models", endpoint_name)]:
        if _is_ours(name, endpoint_name) and _delete(sm.delete_model, ModelName=name):
            report.deleted.append(f"model {name}")

    buckets = _stack_buckets(cfn, s3, stack_name)
    stack = describe_stack(cfn, stack_name)
    if stack is not None:
        code_bucket = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}.get("CodeBucket")
        if code_bucket:  # the --bucket of deploy: not the stack's, so never deleted here
            report.kept[f"s3://{code_bucket}/{stack_name}/ and s3://{code_bucket}/scones/"] = (
                "deployment code, training data and model artefacts in your own bucket (deploy --bucket); "
                "delete them yourself if you no longer need them")
        cfn.delete_stack(StackName=stack_name)
        try:
            cfn.get_waiter("stack_delete_complete").wait(StackName=stack_name,
                                                         WaiterConfig={"Delay": 10, "MaxAttempts": 180})
            report.deleted.append(f"stack {stack_name}")
        except WaiterError:
            status = stack_status(cfn, stack_name)
            reasons = stack_failures(cfn, stack_name)
            report.failed[f"stack {stack_name}"] = (f"{status}: {'; '.join(reasons) or 'no reason reported'}; "
                                                   f"fix that and run teardown again")
    for bucket in buckets:
        try:
            if delete_data:
                count = empty_bucket(s3, bucket)
                s3.delete_bucket(Bucket=bucket)
                report.deleted.append(f"bucket s3://{bucket} ({count} object versions)")
            else:
                count = _count_objects(s3, bucket)
                report.kept[f"bucket s3://{bucket}"] = (
                    f"{count} object versions (images, captures) kept by DeletionPolicy Retain; "
                    f"`teardown --delete-data` empties and deletes it")
        except ClientError as err:
            if not _missing(err):
                report.failed[f"bucket s3://{bucket}"] = f"{err.response['Error'].get('Code')}: {err}"
    return report


def _list(call: Any, key: str, name_contains: str) -> list[dict]:
    items, token = [], None
    while True:
        page = call(NameContains=name_contains, MaxResults=100, **({"NextToken": token} if token else {}))
        items += page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return items


def _delete(call: Any, **kwargs: Any) -> bool:
    """Run a delete call; True if it deleted something, False if there was nothing to delete."""
    try:
        call(**kwargs)
        return True
    except ClientError as err:
        if _missing(err):
            return False
        raise


# ---------------------------------------------------------------------------- the CLI's two AWS commands
def _cli_errors(run: Any) -> int:
    """What a user can fix (no credentials or region, a refused request, a bad option) as one line, exit 2."""
    from botocore.exceptions import NoCredentialsError, NoRegionError

    try:
        return run()
    except NoCredentialsError:
        print("error: no AWS credentials: configure them (aws configure, AWS_PROFILE, or an instance role)",
              file=sys.stderr)
    except NoRegionError:
        print("error: no AWS region: pass --region or set AWS_DEFAULT_REGION", file=sys.stderr)
    except ClientError as err:
        error = err.response.get("Error", {})
        print(f"error: AWS refused {err.operation_name}: {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
    return 2


def deploy_from_args(args: Any) -> int:
    def run() -> int:
        import boto3

        from common import paths

        config = DeployConfig(role_arn=args.role_arn, bucket=args.bucket, endpoint_name=args.endpoint_name,
                              stack_name=args.stack_name, threshold=args.threshold, container=args.container,
                              model_path=Path(args.model) if args.model else DEFAULT_MODEL, variants=args.variants,
                              training_mode=args.training_mode, alarm_email=args.alarm_email or "")
        staged = None
        if not config.container:
            from . import data

            staged = data.stage(paths.data_dir(args.data_dir))
        deployment = deploy(boto3.Session(region_name=args.region), config, staged)
        print(json.dumps(deployment.summary(), indent=2))
        return 0

    return _cli_errors(run)


def teardown_from_args(args: Any) -> int:
    def run() -> int:
        import boto3

        session = boto3.Session(region_name=args.region)
        report = teardown(session.client("sagemaker"), session.client("cloudformation"), session.client("s3"),
                          endpoint_name=args.endpoint_name, stack_name=args.stack_name,
                          delete_data=args.delete_data)
        print("\n".join(report.lines()))
        return 0 if report.ok else 1

    return _cli_errors(run)
