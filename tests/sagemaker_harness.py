"""What SageMaker does with a training job, done here for a job moto created (moto completes a job at once
and runs nothing): the container's part, from what was uploaded and what DescribeTrainingJob says."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from common import sagemaker_jobs as sj
from tests.scones_aws_fixtures import REGION


def sagemaker_client(session):
    """The client sagemaker-core's resources use for `session` (it caches one per session and region)."""
    from sagemaker.core.utils.utils import SageMakerClient

    return SageMakerClient(session=session, region_name=session.region_name).sagemaker_client


@pytest.fixture()
def stubbed():
    """(session, Stubber) on the SageMaker client the launcher's calls go through; every response must be used."""
    session = boto3.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sagemaker_client(session)) as stub:
        yield session, stub
        stub.assert_no_pending_responses()


def run_container(session, name: str, opt_ml: Path, checkpoints: Path | None = None) -> str:
    """Do what SageMaker does with the described job: copy every channel to <opt_ml>/input/data/<name>,
    give the hyperparameters and hosts (here as the training toolkit's SM_* variables), run the
    ContainerEntrypoint, and upload /opt/ml/model as model.tar.gz where the job's description says.
    `checkpoints`: where the entry point keeps its checkpoints (a `checkpoint_dir` hyperparameter added
    here, so that a test never writes this machine's /opt/ml/checkpoints)."""
    described = session.client("sagemaker").describe_training_job(TrainingJobName=name)
    s3 = session.client("s3")
    hyperparameters = {**described["HyperParameters"], **({"checkpoint_dir": str(checkpoints)} if checkpoints else {})}
    env = {**os.environ, "SM_HPS": json.dumps(hyperparameters), "SM_HOSTS": '["localhost"]',
           "SM_CURRENT_HOST": "localhost", "SM_MODEL_DIR": str(opt_ml / "model"), "OMP_NUM_THREADS": "1",
           "PIP_NO_INDEX": "1"}  # the job's pip install finds everything installed here: no network in tests
    for channel in described["InputDataConfig"]:
        bucket, prefix = sj.split_s3(channel["DataSource"]["S3DataSource"]["S3Uri"])
        local = opt_ml / "input" / "data" / channel["ChannelName"]
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
            target = local / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
        env[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(local)
    entrypoint = [sys.executable] + [a.replace("/opt/ml", str(opt_ml)) for a in
                                     described["AlgorithmSpecification"]["ContainerEntrypoint"][1:]]
    done = subprocess.run(entrypoint, env=env, cwd=opt_ml, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    archive = opt_ml / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(opt_ml / "model", arcname=".")
    bucket, key = sj.split_s3(described["ModelArtifacts"]["S3ModelArtifacts"])
    s3.upload_file(str(archive), bucket, key)
    return done.stdout


def start_and_run(opt_ml: Path, checkpoints: Path | None = None, show: Callable[[str], Any] = lambda _: None):
    """A stand-in for `sagemaker_jobs.start` (patch it in) that creates the job, then does SageMaker's part
    at once with `run_container`, as SageMaker runs the container between create and describe; `show`
    gets what the container printed."""
    create = sj.start

    def start(spec, session):
        job = create(spec, session)
        show(run_container(session, spec.name, opt_ml, checkpoints=checkpoints))
        return job
    return start
