"""The SageMaker launcher (common.sagemaker_jobs), offline: its request against botocore's service model
(stricter than botocore's own validation and moto), created and described in moto and run end to end
as SageMaker would run it (the code channel's launch script under the container contract, one process and
torchrun with two, its model.tar.gz uploaded where DescribeTrainingJob says and unpacked again), and
the waits pinned with a botocore Stubber on AWS's documented DescribeTrainingJob responses: Completed,
Failed (FailureReason shown), Stopped (a failure, though SageMaker's waiter counts it a success), and a
spot job Interrupted then Completed."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from common import paths, s3io
from common import sagemaker_jobs as sj
from tests.sagemaker_harness import sagemaker_client, start_and_run, stubbed  # noqa: F401 (a fixture)
from tests.scones_aws_fixtures import REGION, ROLE, aws_session  # noqa: F401 (a fixture)
from tests.service_model_check import Recorder, request_problems
from tests.test_sagemaker_entry import (  # noqa: F401 (fixtures: real digits as IDX files, generated landmark photos)
    LANDMARK_HPS,
    MNIST_HPS,
    landmark_channel,
    mnist_channel,
)

BUCKET = "my-bucket"


def _settings(**compute) -> sj.SageMakerSettings:
    return sj.SageMakerSettings(ROLE, BUCKET, sj.Compute(**{"instance_type": "ml.m5.xlarge", **compute}))


TOY_ENTRY = '''"""A stand-in entry point: reads the contract, joins torchrun's group, rank 0 writes what it saw."""
import json

import torch
import torch.distributed as dist

from common.container import Contract, init_distributed, shutdown


def main():
    contract = Contract.from_env()
    group = init_distributed()
    ranks = torch.tensor([float(group.rank + 1)])
    if group.distributed:
        dist.all_reduce(ranks)
    if group.is_main:
        contract.model_dir.mkdir(parents=True, exist_ok=True)
        seen = {"world_size": group.world_size, "rank_sum": ranks.item(), "hosts": list(contract.hosts),
                "files": sorted(p.name for p in contract.channel("train").iterdir()),
                "hyperparameters": dict(contract.hyperparameters), "module_file": __file__}
        (contract.model_dir / "seen.json").write_text(json.dumps(seen))
    shutdown()


if __name__ == "__main__":
    main()
'''


@pytest.fixture()
def toy_repo(tmp_path) -> Path:
    """A repository with common/ and a project whose src/ has a stand-in entry point."""
    root = tmp_path / "repo"
    shutil.copytree(paths.REPO_ROOT / "common", root / "common", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "toy" / "src").mkdir(parents=True)
    (root / "toy" / "__init__.py").write_text("")
    (root / "toy" / "src" / "__init__.py").write_text("")
    (root / "toy" / "src" / "sagemaker_entry.py").write_text(TOY_ENTRY)
    return root


def _toy_job(root: Path, data: Path) -> sj.ScriptJob:
    return sj.ScriptJob("toy", "toy.src.sagemaker_entry", "toy-cnn", {"profile": "tiny", "epochs": 2, "lr": 0.01},
                        {"train": data}, root=root)


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for name in ("a.bin", "b.bin"):
        (data / "sub").mkdir(parents=True, exist_ok=True)
        (data / "sub" / name).write_bytes(os.urandom(64))
    (data / "top.txt").write_text("x")
    return data


# ----------------------------------------------------------------- the request and its checks


def test_a_spot_multi_instance_request_meets_the_service_model(aws_session, toy_repo, tmp_path):
    recorder = Recorder(sagemaker_client(aws_session))
    settings = _settings(instance_count=2, processes_per_host=4, spot=True, max_run_seconds=3600)
    name = sj.submit_script(_toy_job(toy_repo, _data(tmp_path)), settings, tmp_path / "work", session=aws_session,
                            log=lambda _: None)
    request = recorder.params("CreateTrainingJob")
    assert request_problems("sagemaker", "CreateTrainingJob", request) == []
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/ml-portfolio/jobs/{name}/checkpoints/",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("/pytorch:2.14-cpu-amzn2023-sagemaker")
    # SageMaker takes strings only; the entry point's contract parses them back
    assert request["HyperParameters"] == {"profile": "tiny", "epochs": "2", "lr": "0.01"}
    described = aws_session.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert described["CheckpointConfig"] == request["CheckpointConfig"]
    gpu = sj.script_job_spec(_toy_job(toy_repo, tmp_path), _settings(instance_type="ml.g5.12xlarge"), name, REGION)
    assert gpu.algorithm.image_uri.endswith("/pytorch:2.14-cu133-amzn2023-sagemaker") and gpu.checkpoint_s3 is None


def test_the_checker_refuses_what_botocore_and_moto_accept(aws_session):
    """An underscore in the name and an instance type that does not exist: botocore sends both and moto
    creates the job; AWS refuses them (ValidationException). The service-model check finds both."""
    spec = sj.TrainingJobSpec("mnist_cnn", ROLE, sj.Algorithm("image:1"), (sj.Channel("train", "s3://b/t/"),),
                              "s3://b/out", sj.Compute("ml.g5.huge"))
    recorder = Recorder(sagemaker_client(aws_session))
    sj.start(spec, aws_session)  # moto: created
    found = request_problems("sagemaker", "CreateTrainingJob", recorder.params("CreateTrainingJob"))
    assert any("TrainingJobName: 'mnist_cnn' does not match" in p for p in found)
    assert any("InstanceType: 'ml.g5.huge' is not one of" in p for p in found)
    assert len(found) == 2


def test_names_and_compute_are_checked_before_anything_is_sent():
    assert sj.job_name("mnist-cnn", dt.datetime(2026, 1, 2, 3, 4, 5, 678000)) == "mnist-cnn-20260102-030405-678"
    with pytest.raises(ValueError, match="longer than 63"):
        sj.job_name("x" * 44)
    with pytest.raises(ValueError, match="max_wait_seconds .* at least max_run_seconds"):
        sj.Compute(spot=True, max_run_seconds=7200, max_wait_seconds=3600)
    with pytest.raises(ValueError, match="SAGEMAKER_ROLE .* SAGEMAKER_BUCKET"):
        sj.SageMakerSettings("", BUCKET)


# ------------------------------------------------- end to end: moto, the contract, the launch script


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "torchrun, two processes"])
def test_a_job_runs_its_entry_point_from_the_code_channel_and_its_model_comes_back(
        aws_session, toy_repo, tmp_path, monkeypatch, processes):
    """moto completes a job at once and writes no artefact: the test runs the container's part itself,
    from what was uploaded and described, then the launcher waits, downloads and unpacks the model."""
    data = _data(tmp_path)
    job = _toy_job(toy_repo, data)
    settings = _settings(processes_per_host=processes)
    opt_ml, output = tmp_path / "opt_ml", []
    monkeypatch.setattr(sj, "start", start_and_run(opt_ml, show=output.append))
    trained = sj.train_script(job, settings, tmp_path / "work", session=aws_session, poll_seconds=0,
                              log=lambda _: None)
    model_dir = trained.model_dir
    assert model_dir == tmp_path / "work" / trained.job_name / "model"
    assert trained.timings["instance_type"] == "ml.m5.xlarge" and trained.timings["spot"] is False
    seen = json.loads((model_dir / "seen.json").read_text())
    assert seen["world_size"] == processes and seen["rank_sum"] == processes * (processes + 1) / 2
    assert seen["hyperparameters"] == {"profile": "tiny", "epochs": 2, "lr": 0.01}
    assert seen["files"] == ["sub", "top.txt"]
    # the entry point ran from the packaged code channel, not from this checkout
    assert seen["module_file"].startswith(str(opt_ml / "input" / "data" / "code"))
    if processes > 1:
        assert "torch.distributed.run --nnodes=1 --nproc_per_node=2 --node_rank=0" in output[0]
    # a second job uploads only the data that changed
    uploads = s3io.upload_folder(data, f"s3://{BUCKET}/ml-portfolio/data/toy/train/", session=aws_session,
                                 skip_unchanged=True)
    assert uploads == []


def test_the_model_archive_may_not_write_outside_its_folder(aws_session, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "x").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "x", arcname="../outside.txt")
    aws_session.client("s3").upload_file(str(evil), BUCKET, "jobs/evil/output/model.tar.gz")
    job = type("Job", (), {"training_job_name": "evil", "model_artifacts": type("A", (), {
        "s3_model_artifacts": f"s3://{BUCKET}/jobs/evil/output/model.tar.gz"})()})()
    with pytest.raises(tarfile.OutsideDestinationError):
        sj.download_model(job, tmp_path / "model", aws_session)
    assert not (tmp_path / "outside.txt").exists()


# --------------------------------------------------- the waits, on AWS's documented responses


NAME = "mnist-cnn-20260102-030405-678"


def _described(status: str, secondary: str, **extra) -> dict:
    """A DescribeTrainingJob response with the members AWS documents as always present."""
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    return {"TrainingJobName": NAME, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{NAME}",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/ml-portfolio/jobs/{NAME}/output/model.tar.gz"},
            "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "AlgorithmSpecification": {"TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-"
                                                        "cu133-amzn2023-sagemaker", "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": created, **extra}


def _wait(session, responses, stub) -> tuple[object, list[str]]:
    for response in responses:
        stub.add_response("describe_training_job", response, {"TrainingJobName": NAME})
    lines: list[str] = []
    return sj.wait(NAME, session, poll_seconds=0, log=lines.append), lines


def test_a_completed_job_records_its_training_and_billable_seconds(stubbed):
    session, stub = stubbed
    job, lines = _wait(session, [_described("InProgress", "Starting"), _described("InProgress", "Training"),
                                 _described("Completed", "Completed", TrainingTimeInSeconds=612,
                                            BillableTimeInSeconds=612)], stub)
    assert lines == [f"{NAME}: InProgress (Starting)", f"{NAME}: InProgress (Training)", f"{NAME}: Completed (Completed)"]
    assert sj.timings(job) == {"training_job": NAME, "training_seconds": 612, "billable_seconds": 612,
                               "instance_type": "ml.g5.xlarge", "instance_count": 1, "spot": False}


def test_a_failed_job_raises_with_its_failure_reason(stubbed):
    session, stub = stubbed
    reason = "AlgorithmError: ValueError: the training job has no input channel 'train' (channels: code)"
    with pytest.raises(sj.TrainingJobFailed, match=r"ended Failed \(Failed\): AlgorithmError: ValueError: the "
                                                    r"training job has no input channel 'train'"):
        _wait(session, [_described("InProgress", "Downloading"), _described("Failed", "Failed", FailureReason=reason)],
              stub)


def test_a_stopped_job_is_a_failure_though_the_waiter_counts_it_a_success(stubbed):
    session, stub = stubbed
    stopped = _described("Stopped", "MaxRuntimeExceeded")
    stub.add_response("describe_training_job", stopped, {"TrainingJobName": NAME})
    sagemaker_client(session).get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=NAME, WaiterConfig={"Delay": 0})  # botocore's waiter: no error on Stopped
    with pytest.raises(sj.TrainingJobFailed, match=r"ended Stopped \(MaxRuntimeExceeded\): no FailureReason given"):
        _wait(session, [_described("InProgress", "Training"), _described("Stopped", "MaxRuntimeExceeded")], stub)


def test_a_spot_job_interrupted_then_completed_resumes_and_bills_less(stubbed):
    session, stub = stubbed
    spot = {"EnableManagedSpotTraining": True,
            "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/ml-portfolio/jobs/{NAME}/checkpoints/",
                                 "LocalPath": "/opt/ml/checkpoints"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}}
    job, lines = _wait(session, [_described("InProgress", "Training", **spot),
                                 _described("InProgress", "Interrupted", **spot),
                                 _described("InProgress", "Starting", **spot),
                                 _described("InProgress", "Training", **spot),
                                 _described("Completed", "Completed", TrainingTimeInSeconds=1000,
                                            BillableTimeInSeconds=320, **spot)], stub)
    assert f"{NAME}: InProgress (Interrupted)" in lines and lines[-1] == f"{NAME}: Completed (Completed)"
    assert sj.timings(job)["spot"] is True and sj.timings(job)["spot_saving"] == 0.68


def test_a_spot_job_that_waited_too_long_is_a_failure(stubbed):
    session, stub = stubbed
    with pytest.raises(sj.TrainingJobFailed, match=r"Stopped \(MaxWaitTimeExceeded\)"):
        _wait(session, [_described("InProgress", "Interrupted", EnableManagedSpotTraining=True),
                        _described("Stopped", "MaxWaitTimeExceeded", EnableManagedSpotTraining=True)], stub)


def test_the_mnist_entry_point_trains_from_its_packaged_source_and_loads_back(aws_session, tmp_path, monkeypatch,
                                                                              mnist_channel):
    """The real project through the launcher: `train_project` packages common/ + mnist_classifier/src/
    (their imports resolve from the code channel alone), the job's container runs the entry point on a
    small real-digit channel, and `load_trained` gives the notebook what a local fit gives."""
    from mnist_classifier.src import sagemaker_entry

    opt_ml = tmp_path / "opt_ml"
    monkeypatch.setattr(sj, "start", start_and_run(opt_ml, checkpoints=tmp_path / "checkpoints"))
    hyperparameters = {**MNIST_HPS, "epochs": 1}
    trained = sj.train_project("mnist_classifier", hyperparameters, mnist_channel, _settings(), tmp_path / "work")
    code = opt_ml / "input" / "data" / "code"
    assert (code / "requirements.txt").read_text().split() == list(sj.pinned(sj.IMAGE_LACKS))
    assert not (code / "landmark_classifier").exists() and (code / "common" / "container.py").is_file()
    models = sagemaker_entry.load_trained(trained.model_dir)
    assert list(models) == ["mlp_baseline"] and models["mlp_baseline"].history.epoch == [1]
    assert trained.job_name.startswith("mnist-")
    with pytest.raises(ValueError, match="real dataset, and this run has only the offline stand-in"):
        sj.train_project("mnist_classifier", {}, mnist_channel, _settings(), tmp_path / "work", stand_in=True)


def test_the_parameters_cell_chooses_where_to_train():
    assert sj.notebook_settings("local", None, None, "ml.g5.xlarge") is None
    settings = sj.notebook_settings("sagemaker", ROLE, BUCKET, "ml.g5.12xlarge", 2, True)
    assert settings.compute == sj.Compute("ml.g5.12xlarge", 2, spot=True)
    with pytest.raises(ValueError, match="TRAIN_ON='SageMaker': choose one of local, sagemaker"):
        sj.notebook_settings("SageMaker", ROLE, BUCKET, "ml.g5.xlarge")
    with pytest.raises(ValueError, match="needs SAGEMAKER_ROLE"):
        sj.notebook_settings("sagemaker", None, BUCKET, "ml.g5.xlarge")


def test_the_landmark_entry_point_trains_from_its_packaged_source_and_loads_back(aws_session, tmp_path, monkeypatch,
                                                                                 landmark_channel):
    """As for MNIST: the landmark project packaged alone trains its scratch CNN in the job's container, and
    `load_trained` gives the notebook the `train.ScratchRun` that `train.train_scratch` gives locally."""
    from landmark_classifier.src import sagemaker_entry, train

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the job's decode cache
    opt_ml = tmp_path / "opt_ml"
    monkeypatch.setattr(sj, "start", start_and_run(opt_ml, checkpoints=tmp_path / "checkpoints"))
    trained = sj.train_project("landmark_classifier", {**LANDMARK_HPS, "epochs": 1}, landmark_channel, _settings(),
                               tmp_path / "work")
    run = sagemaker_entry.load_trained(trained.model_dir)
    assert isinstance(run, train.ScratchRun) and not run.model.training and len(run.history.valid_accuracy) == 1
    assert trained.job_name.startswith("landmark-")
    assert not (opt_ml / "input" / "data" / "code" / "mnist_classifier").exists()
