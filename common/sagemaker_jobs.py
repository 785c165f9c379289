"""Training (and Batch Transform) on SageMaker: the one launcher every project uses, on the SageMaker SDK v3's core
(`sagemaker.core.resources.TrainingJob` and its request shapes; imported lazily, only AWS runs need it).

    settings = notebook_settings("sagemaker", role_arn, bucket, "ml.g5.xlarge", instance_count=2, spot=True)
    trained = train_project("mnist_classifier", {"profile": "full"}, data_dir / "mnist", settings)
    models = sagemaker_entry.load_trained(trained.model_dir)   # what a local fit gives the notebook

`train_project` (`train_script` for any ScriptJob) packages the source (`common/` + the project's `src/` + `sagemaker_launch.py`, a generated
script that runs the entry module, under torchrun when the job has several hosts or processes per host),
uploads it and the local data folders, starts a job on SageMaker's PyTorch 2.14 training image
(the newest; this repository pins 2.15 locally, so entry points use nothing 2.15-only), waits, and
downloads and unpacks model.tar.gz. Spot jobs get `EnableManagedSpotTraining`, a `CheckpointConfig`
(S3 <-> /opt/ml/checkpoints, which SageMaker restores before a restarted job's entry point runs) and
`MaxWaitTimeInSeconds`. `start` + `wait` run any job, such as the Scones built-in algorithm's.

Why not the SDK's `ModelTrainer` (package sagemaker-train 1.27.0): it installs beside the pins, but adds 34
packages and about 170 MB (mlflow 3.17 with its web server stack, databricks-sdk) and downgrades
cryptography 51.0.1 to 50.0.2 (mlflow pins < 51), for what `TrainingJob.create` plus a 40-line launch
script do here. Note: SageMaker's own waiter and `TrainingJob.wait()` return on Stopped; `wait` below
treats Stopped (MaxRuntimeExceeded, MaxWaitTimeExceeded, a stop) as the failure it is for a caller that
wants a model.

Batch Transform: `create_model` (the serving image + model.tar.gz), `start_transform` (CreateTransformJob
from a `TransformJobSpec`: one whole S3 object per request, its answer in <output>/<key>.out) and
`wait_transform`, which, like `wait`, raises on Stopped as on Failed, with the FailureReason.
"""
from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import paths, s3io

CODE_CHANNEL = "code"
CODE_DIR = f"/opt/ml/input/data/{CODE_CHANNEL}"  # where SageMaker puts the code channel's files (File mode)
LAUNCHER = "sagemaker_launch.py"
CHECKPOINT_LOCAL = "/opt/ml/checkpoints"
# SageMaker's newest PyTorch training image (its config in sagemaker-core: "pytorch-amzn2023" 2.14; the
# cpu and cu133 variants, picked by instance type). Its "-sagemaker" flavour is the one for training jobs.
PYTORCH_FRAMEWORK, PYTORCH_VERSION = "pytorch-amzn2023", "2.14"
TERMINAL = ("Completed", "Failed", "Stopped")
NAME_LIMIT = 63  # TrainingJobName: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}


class TrainingJobFailed(RuntimeError):
    """A training job that ended Failed or Stopped; the message has its FailureReason."""


class TransformJobFailed(RuntimeError):
    """A Batch Transform job that ended Failed or Stopped; the message has its FailureReason."""


@dataclass(frozen=True)
class Compute:
    """What a job runs on. `processes_per_host` 0: one per GPU (1 on a CPU instance). Spot: at most
    `max_wait_seconds` (default twice `max_run_seconds`) of waiting for capacity plus running."""
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1
    processes_per_host: int = 0
    spot: bool = False
    max_run_seconds: int = 4 * 3600
    max_wait_seconds: int = 0
    volume_gb: int = 30

    def __post_init__(self):
        if self.instance_count < 1 or self.processes_per_host < 0:
            raise ValueError(f"instance_count must be >= 1 and processes_per_host >= 0, got {self}")
        if self.spot and self.max_wait_seconds and self.max_wait_seconds < self.max_run_seconds:
            raise ValueError(f"max_wait_seconds ({self.max_wait_seconds}) must be at least max_run_seconds "
                             f"({self.max_run_seconds}): SageMaker counts the run inside the wait")

    @property
    def max_wait(self) -> int:
        """A spot job's MaxWaitTimeInSeconds: waiting for capacity plus running."""
        return self.max_wait_seconds or 2 * self.max_run_seconds


@dataclass(frozen=True)
class Channel:
    """An input channel: an S3 prefix SageMaker copies to /opt/ml/input/data/<name>/ (File mode)."""
    name: str
    s3_uri: str
    content_type: str | None = None
    distribution: str = "FullyReplicated"  # or "ShardedByS3Key": each host gets a share of the objects


@dataclass(frozen=True)
class Algorithm:
    """The container and what it is told: `entrypoint` (ContainerEntrypoint) replaces the image's own."""
    image_uri: str
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingJobSpec:
    name: str
    role_arn: str
    algorithm: Algorithm
    channels: tuple[Channel, ...]
    output_s3: str                      # model.tar.gz goes to <output_s3>/<name>/output/
    compute: Compute = Compute()
    checkpoint_s3: str | None = None    # spot: where /opt/ml/checkpoints is kept


def job_name(base: str, now: datetime | None = None) -> str:
    """`base`-YYYYmmdd-HHMMSS-mmm (UTC): a new name per job, as SageMaker names are unique per account."""
    now = now or datetime.now(timezone.utc)
    name = f"{base}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}"
    if len(name) > NAME_LIMIT:
        raise ValueError(f"job name {name!r} is longer than {NAME_LIMIT} characters: shorten {base!r}")
    return name


def hyperparameter_strings(values: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker takes hyperparameters as strings: strings as they are, anything else as JSON (3 -> "3",
    True -> "true", [8, 16] -> "[8, 16]"), which the entry point's contract parses back."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def create_arguments(spec: TrainingJobSpec) -> dict[str, Any]:
    """`TrainingJob.create`'s arguments for `spec`: the SDK's request shapes (it serialises them into
    CreateTrainingJob's request)."""
    from sagemaker.core import shapes

    compute = spec.compute
    algorithm = shapes.AlgorithmSpecification(training_image=spec.algorithm.image_uri, training_input_mode="File",
                                              **({"container_entrypoint": list(spec.algorithm.entrypoint)}
                                                 if spec.algorithm.entrypoint else {}))
    channels = [shapes.Channel(channel_name=c.name, input_mode="File",
                               data_source=shapes.DataSource(s3_data_source=shapes.S3DataSource(
                                   s3_data_type="S3Prefix", s3_uri=c.s3_uri, s3_data_distribution_type=c.distribution)),
                               **({"content_type": c.content_type} if c.content_type else {}))
                for c in spec.channels]
    stopping = {"max_runtime_in_seconds": compute.max_run_seconds}
    arguments: dict[str, Any] = {
        "training_job_name": spec.name, "role_arn": spec.role_arn, "algorithm_specification": algorithm,
        "input_data_config": channels, "hyper_parameters": dict(spec.algorithm.hyperparameters),
        "output_data_config": shapes.OutputDataConfig(s3_output_path=spec.output_s3),
        "resource_config": shapes.ResourceConfig(instance_type=compute.instance_type,
                                                 instance_count=compute.instance_count,
                                                 volume_size_in_gb=compute.volume_gb),
    }
    if compute.spot:
        stopping["max_wait_time_in_seconds"] = compute.max_wait
        arguments["enable_managed_spot_training"] = True
    if spec.checkpoint_s3:
        arguments["checkpoint_config"] = shapes.CheckpointConfig(s3_uri=spec.checkpoint_s3, local_path=CHECKPOINT_LOCAL)
    arguments["stopping_condition"] = shapes.StoppingCondition(**stopping)
    return arguments


def start(spec: TrainingJobSpec, session: Any) -> Any:
    """Create the job (CreateTrainingJob); returns the SDK's `TrainingJob`."""
    from sagemaker.core.resources import TrainingJob

    return TrainingJob.create(**create_arguments(spec), session=session, region=session.region_name)


def _value(attribute: Any, default: Any = None) -> Any:
    """The SDK marks fields a response lacks as `Unassigned`; those read as `default`."""
    from sagemaker.core.utils.utils import Unassigned

    return default if attribute is None or isinstance(attribute, Unassigned) else attribute


def failure_message(job: Any) -> str:
    status, secondary = job.training_job_status, _value(job.secondary_status, "")
    reason = _value(job.failure_reason) or "no FailureReason given"
    return f"training job {job.training_job_name} ended {status} ({secondary}): {reason}"


def wait(name: str, session: Any, *, poll_seconds: float = 30, log: Callable[[str], None] = print) -> Any:
    """Poll DescribeTrainingJob until the job ends, logging each new (status, secondary status): Starting,
    Downloading, Training, Interrupted (a spot reclaim: the job restarts from its checkpoints), Uploading.
    Returns the Completed `TrainingJob`; Failed or Stopped raises TrainingJobFailed with the reason."""
    from sagemaker.core.resources import TrainingJob

    job = TrainingJob.get(training_job_name=name, session=session, region=session.region_name)
    job = _poll(name, job, lambda j: (j.training_job_status, _value(j.secondary_status, "")), poll_seconds, log)
    if job.training_job_status != "Completed":
        raise TrainingJobFailed(failure_message(job))
    return job


def _poll(name: str, job: Any, state: Callable[[Any], tuple[str, str]], poll_seconds: float,
          log: Callable[[str], None]) -> Any:
    """Refresh `job` until its status is terminal, logging each new (status, detail); returns it then."""
    seen = None
    while True:
        current = state(job)
        if current != seen:
            log(f"{name}: {current[0]} ({current[1]})" if current[1] else f"{name}: {current[0]}")
            seen = current
        if current[0] in TERMINAL:
            return job
        time.sleep(poll_seconds)
        job.refresh()


def timings(job: Any) -> dict[str, Any]:
    """What the job cost in time: TrainingTimeInSeconds (on the instances), BillableTimeInSeconds (what is
    paid: less than the training time on spot) and the spot saving that follows."""
    training, billable = _value(job.training_time_in_seconds), _value(job.billable_time_in_seconds)
    result = {"training_job": job.training_job_name, "training_seconds": training, "billable_seconds": billable,
              "instance_type": job.resource_config.instance_type,
              "instance_count": job.resource_config.instance_count,
              "spot": bool(_value(job.enable_managed_spot_training, False))}
    if result["spot"] and training and billable is not None:
        result["spot_saving"] = round(1 - billable / training, 4)
    return result


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def pack_model(files: dict[str, Path], archive: Path) -> Path:
    """model.tar.gz with each file at its name (SageMaker unpacks it into /opt/ml/model). Members carry no
    owner, time or mode of this machine, so the same files give the same archive (and the same S3 ETag)."""
    def reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o644
        return info

    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, path in files.items():
            tar.add(path, arcname=name, filter=reproducible)
    return archive


def download_model(job: Any, dest: Path, session: Any) -> Path:
    """Download the job's model.tar.gz and unpack it into `dest` (emptied first): the folder the entry
    point filled as /opt/ml/model. The archive's members may not leave `dest` (tarfile's data filter)."""
    import shutil

    uri = _value(_value(job.model_artifacts) and job.model_artifacts.s3_model_artifacts)
    if not uri:
        raise TrainingJobFailed(f"training job {job.training_job_name} names no model artefact")
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = dest.with_name(f".{dest.name}.model.tar.gz")
    bucket, key = split_s3(uri)
    try:
        session.client("s3").download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    finally:
        archive.unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------ Batch Transform


@dataclass(frozen=True)
class TransformJobSpec:
    """A Batch Transform job for a model that answers one object per request: every object under `input_s3`
    is sent whole (SplitType None) as one request (SingleRecord) with `content_type`, and its answer is
    written to `output_s3` as <its key relative to input_s3>.out (AssembleWith None: the answer as it is).
    `max_concurrent` 0 leaves MaxConcurrentTransforms to the container's GET /execution-parameters (1 if
    it has none); `max_payload_mb` is the largest object sent (Batch Transform's default is 6)."""
    name: str
    model_name: str
    input_s3: str
    output_s3: str
    content_type: str = "application/x-image"
    accept: str = "application/json"
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 1
    max_payload_mb: int = 20
    max_concurrent: int = 0
    invocation_timeout_seconds: int = 60  # one request (ModelClientConfig; SageMaker's default is 600)
    invocation_retries: int = 1           # a failing request is tried again this often (0-3; default 3)
    environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        # MaxPayloadInMB 0 means chunked bodies, which common.inference_server refuses; the API caps the
        # payload at 100 MB and MaxConcurrentTransforms x MaxPayloadInMB at 100 MB too.
        if not 1 <= self.max_payload_mb <= 100 or self.max_concurrent < 0 or \
                self.max_concurrent * self.max_payload_mb > 100:
            raise ValueError(f"max_payload_mb must be 1-100 and max_concurrent x max_payload_mb at most 100 MB, "
                             f"got {self.max_payload_mb} and {self.max_concurrent}")
        for uri in (self.input_s3, self.output_s3):
            split_s3(uri)


def transform_arguments(spec: TransformJobSpec) -> dict[str, Any]:
    """`TransformJob.create`'s arguments for `spec` (the SDK serialises them into CreateTransformJob's request)."""
    from sagemaker.core import shapes

    arguments: dict[str, Any] = {
        "transform_job_name": spec.name, "model_name": spec.model_name, "batch_strategy": "SingleRecord",
        "max_payload_in_mb": spec.max_payload_mb,
        "model_client_config": shapes.ModelClientConfig(invocations_timeout_in_seconds=spec.invocation_timeout_seconds,
                                                        invocations_max_retries=spec.invocation_retries),
        "transform_input": shapes.TransformInput(
            data_source=shapes.TransformDataSource(s3_data_source=shapes.TransformS3DataSource(
                s3_data_type="S3Prefix", s3_uri=spec.input_s3)),
            content_type=spec.content_type, split_type="None", compression_type="None"),
        "transform_output": shapes.TransformOutput(s3_output_path=spec.output_s3, accept=spec.accept,
                                                   assemble_with="None"),
        "transform_resources": shapes.TransformResources(instance_type=spec.instance_type,
                                                         instance_count=spec.instance_count),
    }
    if spec.max_concurrent:
        arguments["max_concurrent_transforms"] = spec.max_concurrent
    if spec.environment:
        arguments["environment"] = dict(spec.environment)
    return arguments


def start_transform(spec: TransformJobSpec, session: Any) -> Any:
    """Create the job (CreateTransformJob); returns the SDK's `TransformJob`."""
    from sagemaker.core.resources import TransformJob

    return TransformJob.create(**transform_arguments(spec), session=session, region=session.region_name)


def create_model(name: str, image_uri: str, model_data_s3: str, role_arn: str, session: Any,
                 environment: Mapping[str, str] | None = None) -> str:
    """A SageMaker model (CreateModel): the serving image with `model_data_s3` (a model.tar.gz, which SageMaker
    unpacks into /opt/ml/model) and the role it runs as; returns its ARN. boto3's client, not the SDK's
    `Model.create`: that describes the model afterwards and refuses a description without VpcConfig's
    members (moto's), for nothing this launcher reads."""
    container = {"Image": image_uri, "ModelDataUrl": model_data_s3, **({"Environment": dict(environment)}
                                                                       if environment else {})}
    return session.client("sagemaker").create_model(ModelName=name, PrimaryContainer=container,
                                                    ExecutionRoleArn=role_arn)["ModelArn"]


def transform_failure_message(job: Any) -> str:
    reason = _value(job.failure_reason) or "no FailureReason given"
    return f"transform job {job.transform_job_name} ended {job.transform_job_status}: {reason}"


def wait_transform(name: str, session: Any, *, poll_seconds: float = 30, log: Callable[[str], None] = print) -> Any:
    """Poll DescribeTransformJob until the job ends, logging each new status (InProgress, Stopping, ...).
    Returns the Completed `TransformJob`; Failed or Stopped raises TransformJobFailed with the reason
    (botocore's TransformJobCompletedOrStopped waiter returns on Stopped as on Completed)."""
    from sagemaker.core.resources import TransformJob

    job = TransformJob.get(transform_job_name=name, session=session, region=session.region_name)
    job = _poll(name, job, lambda j: (j.transform_job_status, ""), poll_seconds, log)
    if job.transform_job_status != "Completed":
        raise TransformJobFailed(transform_failure_message(job))
    return job


# ------------------------------------------------------------------ the PyTorch script job


@dataclass(frozen=True)
class SageMakerSettings:
    """The notebook's SageMaker parameters: the role the job runs as, your bucket, the compute."""
    role_arn: str
    bucket: str
    compute: Compute = Compute()
    prefix: str = "ml-portfolio"  # every key this launcher writes is under s3://<bucket>/<prefix>/
    region: str | None = None     # None: boto3's default (AWS_REGION, ~/.aws/config; Studio sets it)

    def __post_init__(self):
        if not self.role_arn or not self.bucket:
            raise ValueError("training on SageMaker needs SAGEMAKER_ROLE (the execution role's ARN) and "
                             "SAGEMAKER_BUCKET (your bucket): set them in the notebook's parameters cell")


@dataclass(frozen=True)
class ScriptJob:
    """An entry point to run: `module` of `project` (runnable as `python -m module`), its hyperparameters
    and its input channels (a local folder, uploaded to the bucket first, or an s3:// prefix)."""
    project: str
    module: str
    base_name: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str | Path] = field(default_factory=dict)
    requirements: tuple[str, ...] = ()  # pip requirements the image lacks, installed before the entry point
    root: Path = paths.REPO_ROOT        # the repository the project and common/ are packaged from


@dataclass(frozen=True)
class TrainedModel:
    job_name: str
    model_dir: Path   # model.tar.gz unpacked: what the entry point wrote to /opt/ml/model
    timings: dict


LAUNCH_SCRIPT = '''"""What the SageMaker training job runs (written by common.sagemaker_jobs): the entry point
{module} with this folder on sys.path, under torchrun when the job has several hosts or processes per host."""
import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE = {module!r}
PROCESSES_PER_HOST = {processes}  # 0: one per GPU, 1 on a CPU instance
MASTER_PORT = "29500"


def main():
    sys.path.insert(0, str(HERE))
    requirements = HERE / "requirements.txt"
    if requirements.exists() and "LOCAL_RANK" not in os.environ:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
    from common.container import Contract, failures_reported

    contract = Contract.from_env()
    processes = PROCESSES_PER_HOST
    if not processes:
        import torch
        processes = max(torch.cuda.device_count(), 1)
    if "LOCAL_RANK" in os.environ or contract.host_count * processes == 1:
        print(f"running {{MODULE}} from {{importlib.util.find_spec(MODULE).origin}}", flush=True)
        with failures_reported(contract):
            runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
        return
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={{contract.host_count}}",
               f"--nproc_per_node={{processes}}", f"--node_rank={{contract.hosts.index(contract.current_host)}}",
               f"--master_addr={{contract.hosts[0]}}", f"--master_port={{MASTER_PORT}}", str(HERE / {launcher!r})]
    print("starting", " ".join(command), flush=True)
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
'''


def _source_files(root: Path, project: str) -> list[Path]:
    skip = ("__pycache__", ".ipynb_checkpoints")
    files = [root / project / "__init__.py"]
    for folder in (root / "common", root / project / "src"):
        files += [p for p in sorted(folder.rglob("*")) if p.is_file() and not any(s in p.parts for s in skip)
                  and p.suffix != ".pyc"]
    return files


def package_source(job: ScriptJob, dest: Path, compute: Compute = Compute()) -> Path:
    """The code channel's folder: common/, <project>/src/ and the launch script (plus requirements.txt)."""
    import shutil

    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    for file in _source_files(job.root, job.project):
        target = dest / file.relative_to(job.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    (dest / LAUNCHER).write_text(LAUNCH_SCRIPT.format(module=job.module, processes=compute.processes_per_host,
                                                      launcher=LAUNCHER))
    if job.requirements:
        (dest / "requirements.txt").write_text("\n".join(job.requirements) + "\n")
    return dest


def pytorch_image(region: str, instance_type: str) -> str:
    from sagemaker.core import image_uris

    return image_uris.retrieve(PYTORCH_FRAMEWORK, region, version=PYTORCH_VERSION, instance_type=instance_type,
                               image_scope="training")


def script_job_spec(job: ScriptJob, settings: SageMakerSettings, name: str, region: str) -> TrainingJobSpec:
    """The request for `job` (its inputs already in S3 as `settings`' prefix lays them out)."""
    root = f"s3://{settings.bucket}/{settings.prefix}"
    channels = [Channel(CODE_CHANNEL, f"{root}/jobs/{name}/code/")]
    channels += [Channel(n, str(v) if str(v).startswith("s3://") else f"{root}/data/{job.project}/{n}/")
                 for n, v in job.inputs.items()]
    compute = settings.compute
    return TrainingJobSpec(
        name=name, role_arn=settings.role_arn,
        algorithm=Algorithm(pytorch_image(region, compute.instance_type), hyperparameter_strings(job.hyperparameters),
                            entrypoint=("python3", f"{CODE_DIR}/{LAUNCHER}")),
        channels=tuple(channels), output_s3=f"{root}/jobs", compute=compute,
        checkpoint_s3=f"{root}/jobs/{name}/checkpoints/" if compute.spot else None)


def submit_script(job: ScriptJob, settings: SageMakerSettings, work_dir: Path, *, session: Any,
                  log: Callable[[str], None] = print) -> str:
    """Package and upload the source and inputs, start the job; returns its name."""
    name = job_name(job.base_name)
    spec = script_job_spec(job, settings, name, session.region_name)
    s3io.upload_folder(package_source(job, Path(work_dir) / name / "code", settings.compute), spec.channels[0].s3_uri,
                       session=session, skip_unchanged=True)
    for channel in spec.channels[1:]:
        local = job.inputs[channel.name]
        if not str(local).startswith("s3://"):  # a dataset is uploaded once, not per job
            s3io.upload_folder(local, channel.s3_uri, session=session, skip_unchanged=True, log=log)
    start(spec, session)
    log(f"started training job {name} on {settings.compute.instance_count} x {settings.compute.instance_type}"
        f"{' (spot)' if settings.compute.spot else ''}: https://console.aws.amazon.com/sagemaker/home?region="
        f"{session.region_name}#/jobs/{name}")
    return name


def train_script(job: ScriptJob, settings: SageMakerSettings, work_dir: Path, *, session: Any = None,
                 poll_seconds: float = 30, log: Callable[[str], None] = print) -> TrainedModel:
    """Run `job` on SageMaker to the end and unpack its model under `work_dir`/<job name>/model."""
    import boto3

    session = session or boto3.Session(region_name=settings.region)
    name = submit_script(job, settings, work_dir, session=session, log=log)
    done = wait(name, session, poll_seconds=poll_seconds, log=log)
    model_dir = download_model(done, Path(work_dir) / name / "model", session)
    return TrainedModel(name, model_dir, timings(done))


# ------------------------------------------------------------------ from a notebook's parameters cell


TRAIN_ON = ("local", "sagemaker")


def notebook_settings(train_on: str, role_arn: str | None, bucket: str | None, instance_type: str,
                      instance_count: int = 1, spot: bool = False) -> SageMakerSettings | None:
    """The parameters cell's TRAIN_ON, SAGEMAKER_ROLE, SAGEMAKER_BUCKET, INSTANCE_TYPE, INSTANCE_COUNT and
    SPOT: None to train in this process ("local"), else where the SageMaker job runs. Checked before
    anything trains, so a typo fails in the first cells, not after the data is loaded."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"TRAIN_ON={train_on!r}: choose one of {', '.join(TRAIN_ON)}")
    if train_on == "local":
        return None
    return SageMakerSettings(role_arn or "", bucket or "", Compute(instance_type, int(instance_count), spot=bool(spot)))


# Where jobs' code folders and unpacked models are kept (git-ignored): outside reports/, whose folders
# the runner may promote into the record.
WORK_DIR = paths.REPO_ROOT / "sagemaker_jobs"


def train_project(project: str, hyperparameters: Mapping[str, Any], train_folder: Path, settings: SageMakerSettings,
                  work_dir: Path | None = None, *, stand_in: bool = False) -> TrainedModel:
    """Train `project`'s entry point (`<project>.src.sagemaker_entry`) on SageMaker with `train_folder` as its
    "train" channel; the caller then loads the model with that module's `load_trained(model_dir)` (kept in
    `work_dir`, default WORK_DIR, /<job name>/model)."""
    if stand_in:
        raise ValueError(f"TRAIN_ON='sagemaker' trains on the real dataset, and this run has only the offline "
                         f"stand-in ({paths.display(Path(train_folder))} lacks it): put the dataset there first")
    job = ScriptJob(project, f"{project}.src.sagemaker_entry", project.split("_")[0].lower(), hyperparameters,
                    {"train": Path(train_folder)}, requirements=pinned(IMAGE_LACKS))
    return train_script(job, settings, work_dir or WORK_DIR)


# What the entry points import (common.downloads, the progress bars, PeakMemory, the landmark metrics)
# beyond the PyTorch image's torch, torchvision, numpy, pandas, scipy and Pillow: installed in the job at
# this repository's pins before the entry point runs (the job needs internet access for it: the default,
# unless the job runs in a VPC without a NAT gateway or with network isolation).
IMAGE_LACKS = ("pooch", "tqdm", "psutil", "scikit-learn")


def pinned(names: tuple[str, ...], requirements: Path = paths.REPO_ROOT / "requirements.txt") -> tuple[str, ...]:
    """`name==version` for each of `names` as requirements.txt pins it (a name it does not pin: a ValueError)."""
    pins = {}
    for line in requirements.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.split("[")[0].lower()] = f"{name}=={version}"
    missing = [n for n in names if n.lower() not in pins]
    if missing:
        raise ValueError(f"{requirements} pins no {', '.join(missing)}")
    return tuple(pins[n.lower()] for n in names)

