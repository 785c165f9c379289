"""The AWS code paths against moto and botocore stubs (never against AWS): the deploy sequence (twice,
reusing nothing; blue/green; two variants; the container), the training request against the algorithm's
documented rules, model.tar.gz, teardown (retained buckets, --delete-data, DELETE_FAILED, twice)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import inspect
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from scones_workflow.src import cli
from scones_workflow.src.aws import training_job
from scones_workflow.src.aws.config import DEFAULT_MODEL, PROJECT_DIR, DeployConfig
from scones_workflow.src.aws.deployment import deploy
from scones_workflow.src.aws.endpoint import switch_endpoint
from scones_workflow.src.aws.executions import EXECUTION_COLUMNS, deploy_and_run, generate_test_case, run_executions
from scones_workflow.src.aws.model_artifact import package_model
from scones_workflow.src.aws.names import timestamp, versioned_name
from scones_workflow.src.aws.stack import TEMPLATE_PATH, build_lambda_zip, deploy_stack
from scones_workflow.src.aws.teardown import teardown
from scones_workflow.src.lambdas import constants
from tests.scones_aws_fixtures import IMAGE, REGION, ROLE, UPDATES, aws_session, tiny_onnx  # noqa: F401

# moto's CloudFormation skips the bucket policies and the alarm (and says so); test_scones_template checks them.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS.*:UserWarning")

STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/scones-workflow/1"


@pytest.fixture()
def onnx_model(tmp_path):
    return tiny_onnx(tmp_path / "model" / "scones_classifier.onnx")


def container_config(onnx_model: Path, tmp_path: Path, **overrides) -> DeployConfig:
    return DeployConfig(role_arn=ROLE, bucket="my-bucket", container=IMAGE, model_path=onnx_model,
                            work_dir=tmp_path / "deploy", **overrides)


# ---------------------------------------------------------------------------- training request
def test_training_request_follows_the_algorithms_documented_rules():
    spec = training_job.TrainingSpec("job-1", ROLE, "s3://b/scones/data", "s3://b/models", num_training_samples=1000)
    uri = training_job.image_classification_uri("us-east-1")
    request = training_job.training_job_spec(spec, uri)
    assert uri == "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
    channels = {c.name: c.s3_uri for c in request.channels}
    assert {c.content_type for c in request.channels} == {"application/x-image"}
    assert channels == {"train": "s3://b/scones/data/train/", "validation": "s3://b/scones/data/test/",
                        "train_lst": "s3://b/scones/data/train.lst", "validation_lst": "s3://b/scones/data/test.lst"}
    hp = request.algorithm.hyperparameters
    # pretrained: 224 x 224 only, resize set and larger, num_layers one the pretrained ResNets have
    assert hp["use_pretrained_model"] == "1" and hp["image_shape"] == "3,224,224"
    assert int(hp["resize"]) > 224 and int(hp["num_layers"]) in {18, 34, 50, 101, 152, 200}
    assert hp["num_classes"] == str(len(constants.CLASS_NAMES))
    scratch = training_job.training_job_spec(dataclasses.replace(spec, mode="scratch"), uri).algorithm.hyperparameters
    assert scratch["use_pretrained_model"] == "0" and scratch["image_shape"] == "3,32,32" and scratch["resize"] == "32"


@pytest.mark.parametrize("hp,rule", [
    # the seed's request: pretrained weights at 32 px
    ({"use_pretrained_model": "1", "image_shape": "3,32,32", "resize": "256", "num_layers": "18"}, "3,224,224"),
    ({"use_pretrained_model": "1", "image_shape": "3,224,224", "num_layers": "18"}, "resize is required"),
    ({"use_pretrained_model": "1", "image_shape": "3,224,224", "resize": "224", "num_layers": "18"}, "larger than"),
    ({"use_pretrained_model": "1", "image_shape": "3,224,224", "resize": "256", "num_layers": "20"}, "num_layers in"),
    ({"use_pretrained_model": "0", "image_shape": "3,64,64", "resize": "32", "num_layers": "20"}, "nothing to crop"),
])
def test_hyperparameters_that_break_the_documentation_are_refused(hp, rule):
    with pytest.raises(ValueError, match=rule):
        training_job.check_hyperparameters(hp)


def test_training_job_is_created_in_moto_with_a_timestamped_name(aws_session):
    """Through the one launcher (common.sagemaker_jobs); the request it sends meets the service model."""
    from sagemaker.core.utils.utils import SageMakerClient

    from tests.service_model_check import Recorder, request_problems

    sm = aws_session.client("sagemaker")
    recorder = Recorder(SageMakerClient(session=aws_session, region_name=REGION).sagemaker_client)
    stamp = timestamp(dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc))
    assert stamp == "20260102-030405-678"
    spec = training_job.TrainingSpec(versioned_name("scones-endpoint", stamp), ROLE, "s3://b/d", "s3://b/m", 1000)
    uri = training_job.train(aws_session, spec, training_job.image_classification_uri(REGION), poll_seconds=0,
                             log=lambda _: None)
    assert uri == "s3://b/m/scones-endpoint-20260102-030405-678/output/model.tar.gz"
    assert request_problems("sagemaker", "CreateTrainingJob", recorder.params("CreateTrainingJob")) == []
    assert sm.describe_training_job(TrainingJobName="scones-endpoint-20260102-030405-678")["HyperParameters"][
        "image_shape"] == "3,224,224"
    with pytest.raises(ValueError, match="longer than 63"):
        versioned_name("x" * 50, stamp)


# ---------------------------------------------------------------------------- container model
def test_model_tar_gz_unpacks_into_opt_ml_model_as_the_container_expects(onnx_model, tmp_path):
    from common.serving import read_metadata

    archive = package_model(onnx_model, tmp_path / "out")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "model.onnx"]  # at the root: /opt/ml/model/model.onnx
        tar.extractall(tmp_path / "opt" / "ml" / "model", filter="data")
    unpacked = tmp_path / "opt" / "ml" / "model"
    assert read_metadata(unpacked / "model.onnx")["class_names"] == list(constants.CLASS_NAMES)
    assert json.loads((unpacked / "metadata.json").read_text())["model_name"] == "tiny"
    assert "SCONES_MODEL=/opt/ml/model/model.onnx" in (PROJECT_DIR / "Dockerfile").read_text()
    again = package_model(onnx_model, tmp_path / "again")
    assert again.read_bytes() == archive.read_bytes()  # reproducible: same model, same archive


def test_the_committed_model_is_what_deploy_container_packs(tmp_path):
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} is not there yet (the run of record commits it)")
    with tarfile.open(package_model(DEFAULT_MODEL, tmp_path)) as tar:
        member = tar.getmember("model.onnx")
        assert member.size == DEFAULT_MODEL.stat().st_size <= 30 * 2**20
        tar.extractall(tmp_path / "opt_ml_model", filter="data")
    # what the container's serve does with it: SCONES_MODEL=/opt/ml/model/model.onnx
    from scones_workflow.src.serving.predictor import Predictor
    from tests.scones_fixtures import png_bytes

    probabilities = Predictor(tmp_path / "opt_ml_model" / "model.onnx")(png_bytes())
    assert len(probabilities) == len(constants.CLASS_NAMES) and abs(sum(probabilities) - 1) < 1e-4


def test_model_with_other_classes_or_no_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        package_model(tmp_path / "missing.onnx", tmp_path)
    wrong = tiny_onnx(tmp_path / "cats.onnx", class_names=("cat", "dog"))
    with pytest.raises(ValueError, match="class_names"):
        package_model(wrong, tmp_path / "out")


def test_dockerfile_installs_no_torch():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    installs = " ".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert "torch" not in installs and "onnxruntime" in installs


def _dockerfile_distributions() -> set[str]:
    """The distributions the Dockerfile installs, with everything they depend on (extras included)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    pip_line = " ".join(re.findall(r"pip install --no-cache-dir ((?:[^\n\\]|\\\n)+)", dockerfile)).replace("\\\n", " ")
    todo = [Requirement(token.strip('"')) for token in pip_line.split() if "==" in token]
    assert len(todo) >= 5, pip_line
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen |= {key, name}
        try:
            dependencies = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in dependencies:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in
                                                (requirement.extras or {""})):
                todo.append(dependency)
    return {k for k in seen if "[" not in k}


def test_the_container_installs_everything_serve_imports(onnx_model):
    """`serve` as in the container: the modules cmd_serve imports, and an ONNX Runtime session, load with every
    package the Dockerfile does not install (nor its dependencies) hidden; optional imports may fail quietly."""
    body = Path(cli.__file__).read_text().split("def cmd_serve")[1].split("\ndef ")[0]
    modules = ["scones_workflow.src." + m for m in re.findall(r"from \.([\w.]+) import", body)]
    assert "scones_workflow.src.serving.server" in modules
    code = ("import importlib, importlib.abc, json, sys\n"
            "from importlib.metadata import packages_distributions\n"
            "owners = packages_distributions()\n"
            f"allowed = set({sorted(_dockerfile_distributions())!r})\n"
            "blocked = set()\n"
            "class Container(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        top = name.split('.')[0]\n"
            "        dists = [d.lower().replace('_', '-') for d in owners.get(top, [])]\n"
            "        if dists and not set(dists) & allowed and top not in ('scones_workflow', 'common'):\n"
            "            blocked.add(top)\n"
            "            raise ModuleNotFoundError(f'not in the container: {name}', name=name)\n"
            "sys.meta_path.insert(0, Container())\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "from common.serving import load_onnx\n"
            f"load_onnx({str(onnx_model)!r})\n"
            "print(json.dumps({'blocked': sorted(blocked), 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR.parent, capture_output=True, text=True)
    assert done.returncode == 0, f"serve needs a package the Dockerfile does not install:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "onnxruntime" in result["loaded"] and not {"torch", "onnx", "sagemaker", "moto"} & set(result["loaded"])


# ---------------------------------------------------------------------------- the deploy sequence
def test_cli_deploy_delegates_to_the_one_deploy_sequence():
    source = Path(cli.__file__).read_text()
    body = source[source.index("def cmd_deploy"):source.index("def cmd_teardown")]
    assert "deploy(boto3.Session(region_name=args.region), config, staged)" in body
    assert "create_" not in body and "train(" not in body
    notebook_path = inspect.getsource(deploy_and_run)
    assert "deploy(session, config, staged)" in notebook_path and "create_" not in notebook_path


def test_second_deploy_reuses_no_name_and_switches_the_endpoint_blue_green(aws_session, onnx_model, tmp_path):
    sm, s3 = aws_session.client("sagemaker"), aws_session.client("s3")
    config = container_config(onnx_model, tmp_path)
    first = deploy(aws_session, config, log=lambda *_: None)
    second = deploy(aws_session, config, log=lambda *_: None)

    assert first.endpoint_action == "created" and second.endpoint_action == "updated"
    assert first.outputs["StackAction"] == "created" and second.outputs["StackAction"] == "updated"
    assert UPDATES == [("scones-endpoint", second.endpoint_config)]  # update_endpoint, not a re-create
    assert first.stamp != second.stamp and first.endpoint_config != second.endpoint_config
    assert set(first.models.values()).isdisjoint(second.models.values())
    endpoint = sm.describe_endpoint(EndpointName="scones-endpoint")
    assert endpoint["EndpointConfigName"] == second.endpoint_config
    # both generations exist (the old fleet until the switch completes), each under its own name
    configs = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    assert configs == {first.endpoint_config, second.endpoint_config}
    model = sm.describe_model(ModelName=second.models["AllTraffic"])["PrimaryContainer"]
    assert model["Image"] == IMAGE and model["ModelDataUrl"].endswith(f"/{second.stamp}/model.tar.gz")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="my-bucket")["Contents"]}
    for stamp in (first.stamp, second.stamp):  # code and definition under new keys: CloudFormation sees the change
        assert {f"scones-workflow/{stamp}/lambdas.zip", f"scones-workflow/{stamp}/workflow.asl.json",
                f"scones/models/{stamp}/model.tar.gz"} <= keys
    capture = sm.describe_endpoint_config(EndpointConfigName=second.endpoint_config)["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == second.capture_s3 == f"s3://{second.outputs['CaptureBucketName']}/data_capture"
    assert capture["InitialSamplingPercentage"] == 100
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}


def test_two_variants_keep_the_serving_model_as_primary(aws_session, onnx_model, tmp_path):
    sm = aws_session.client("sagemaker")
    config = container_config(onnx_model, tmp_path)
    with pytest.raises(ValueError, match="deploy once without variants first"):
        deploy(aws_session, dataclasses.replace(config, variants=True), log=lambda *_: None)
    first = deploy(aws_session, config, log=lambda *_: None)
    canary = deploy(aws_session, dataclasses.replace(config, variants=True), log=lambda *_: None)
    variants = sm.describe_endpoint_config(EndpointConfigName=canary.endpoint_config)["ProductionVariants"]
    assert [(v["VariantName"], v["InitialVariantWeight"]) for v in variants] == list(constants.VARIANTS.items())
    assert canary.models == {"Primary": first.models["AllTraffic"], "Challenger": versioned_name(
        "scones-endpoint", canary.stamp)}
    promoted = deploy(aws_session, config, log=lambda *_: None)  # again without variants: one variant again
    assert list(promoted.models) == [constants.DEFAULT_VARIANT]


def test_cli_deploy_with_container_and_teardown_twice(aws_session, onnx_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["deploy", "--region", REGION, "--role-arn", ROLE, "--bucket", "my-bucket", "--container", IMAGE,
            "--model", str(onnx_model)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("\n{") + 1:])
    assert summary["endpoint_action"] == "created" and summary["training_job"] is None
    sm = aws_session.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="scones-endpoint")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == summary["endpoint_config"]
    assert sm.describe_model(ModelName=summary["models"]["AllTraffic"])["PrimaryContainer"]["Image"] == IMAGE
    assert cli.main(["teardown", "--region", REGION]) == 0
    first = capsys.readouterr().out
    assert "deleted endpoint scones-endpoint" in first and "deleted stack scones-workflow" in first
    assert first.count("kept bucket s3://scones-workflow-") == 2 and "DeletionPolicy Retain" in first
    assert cli.main(["teardown", "--region", REGION]) == 0
    second = capsys.readouterr().out
    assert "nothing to delete" in second and "deleted" not in second and second.count("kept bucket") == 2


def _staged(root: Path):
    """A staged dataset as data.stage returns it: PNGs under train/ and test/ and the two .lst files."""
    import pandas as pd

    from scones_workflow.src.data import SconesData
    from tests.scones_fixtures import png_bytes

    frames = {}
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, label in enumerate((0, 1)):
            file = f"{split}/{constants.CLASS_NAMES[label]}_{i}.png"
            (root / file).write_bytes(png_bytes(value=40 * i))
            rows.append({"index": i, "label": label, "file": file, "class_name": constants.CLASS_NAMES[label]})
        frames[split] = pd.DataFrame(rows)
        (root / f"{split}.lst").write_text("".join(f"{r['index']}\t{r['label']}\t{r['file']}\n" for r in rows))
    return SconesData(root, frames["train"], frames["test"], "test fixture", True)


def test_builtin_algorithm_deploy_trains_a_new_job_each_time_and_the_notebook_uses_it(aws_session, tmp_path):
    sm, s3 = aws_session.client("sagemaker"), aws_session.client("s3")
    staged = _staged(tmp_path / "staged")
    config = DeployConfig(role_arn=ROLE, bucket="my-bucket")
    first = deploy(aws_session, config, staged, log=lambda *_: None)
    rows, capture = deploy_and_run(staged, DeployConfig(role_arn=ROLE, bucket="my-bucket"), executions=0,
                                   session=aws_session)
    jobs = [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]]
    assert len(set(jobs)) == 2 and first.training_job in jobs
    assert all(j.startswith("scones-endpoint-") for j in jobs)
    job = sm.describe_training_job(TrainingJobName=first.training_job)
    assert job["AlgorithmSpecification"]["TrainingImage"] == training_job.image_classification_uri(REGION)
    assert job["HyperParameters"]["num_training_samples"] == str(len(staged.train))
    model = sm.describe_model(ModelName=first.models["AllTraffic"])["PrimaryContainer"]
    assert model["Image"] == training_job.image_classification_uri(REGION)
    assert capture == first.capture_s3 and rows.empty and list(rows.columns) == EXECUTION_COLUMNS
    data_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=first.outputs["DataBucketName"])["Contents"]}
    assert "test.lst" in data_keys and "test/motorcycle_1.png" in data_keys  # where serializeImageData reads
    assert len(UPDATES) == 1  # the notebook's run switched the same endpoint


def _endpoint(status: str, config: str = "old", reason: str | None = None) -> dict:
    """DescribeEndpoint's documented response shape."""
    endpoint = {"EndpointName": "scones-endpoint", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/scones-endpoint",
                "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": dt.datetime(2026, 1, 1),
                "LastModifiedTime": dt.datetime(2026, 1, 1)}
    return {**endpoint, **({"FailureReason": reason} if reason else {})}


NAME = {"EndpointName": "scones-endpoint"}


def test_a_failed_endpoint_is_replaced_and_a_busy_one_is_awaited_before_the_update():
    """SageMaker cannot update an endpoint in Failed (delete, then create) nor one still Creating/Updating."""
    sm = boto3.client("sagemaker", region_name=REGION)
    gone = ("ValidationException", "Could not find endpoint \"scones-endpoint\".")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _endpoint("Failed"), NAME)
        stub.add_response("delete_endpoint", {}, NAME)
        stub.add_client_error("describe_endpoint", *gone)  # the endpoint_deleted waiter
        stub.add_response("create_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
                          {"EndpointName": "scones-endpoint", "EndpointConfigName": "new"})
        stub.add_response("describe_endpoint", _endpoint("InService", "new"), NAME)  # the waiter
        stub.add_response("describe_endpoint", _endpoint("InService", "new"), NAME)  # serving the new config?
        assert switch_endpoint(sm, name="scones-endpoint", config_name="new") == "recreated"

        stub.add_response("describe_endpoint", _endpoint("Updating", "new"), NAME)
        stub.add_response("describe_endpoint", _endpoint("InService", "new"), NAME)
        stub.add_response("describe_endpoint", _endpoint("InService", "new"), NAME)
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
                          {"EndpointName": "scones-endpoint", "EndpointConfigName": "newer"})
        stub.add_response("describe_endpoint", _endpoint("InService", "newer"), NAME)
        stub.add_response("describe_endpoint", _endpoint("InService", "newer"), NAME)
        assert switch_endpoint(sm, name="scones-endpoint", config_name="newer") == "updated"
        stub.assert_no_pending_responses()


def test_a_rolled_back_update_is_an_error_naming_sagemakers_reason():
    """Defect 2. When an UpdateEndpoint fails, SageMaker rolls back: the endpoint is InService again on the old
    config with FailureReason set ("the status is InService but update operation fails", DescribeEndpoint), and
    the endpoint_in_service waiter counts that as success. Before the fix, switch_endpoint said "updated"."""
    sm = boto3.client("sagemaker", region_name=REGION)
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _endpoint("InService", "old"), NAME)
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
                          {"EndpointName": "scones-endpoint", "EndpointConfigName": "new"})
        stub.add_response("describe_endpoint", _endpoint("InService", "old", reason), NAME)  # the waiter: success
        stub.add_response("describe_endpoint", _endpoint("InService", "old", reason), NAME)
        with pytest.raises(RuntimeError, match="update to new failed and SageMaker rolled back; it still serves old: "
                                               "The primary container .* ping health check"):
            switch_endpoint(sm, name="scones-endpoint", config_name="new")
        stub.assert_no_pending_responses()


def test_a_failed_endpoint_is_one_line_with_sagemakers_reason_not_a_traceback(aws_session, onnx_model, tmp_path,
                                                                                capsys, monkeypatch):
    """Defect 3. A new endpoint that goes Failed (bad /ping, no quota): the waiter raises WaiterError; the CLI
    prints SageMaker's FailureReason and exits 2 instead of a traceback."""
    sm = boto3.client("sagemaker", region_name=REGION)
    reason = "Failed to launch: ResourceLimitExceeded for ml.m5.xlarge for endpoint usage"
    with Stubber(sm) as stub:
        stub.add_client_error("describe_endpoint", "ValidationException", 'Could not find endpoint "scones-endpoint".')
        stub.add_response("create_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
                          {"EndpointName": "scones-endpoint", "EndpointConfigName": "new"})
        stub.add_response("describe_endpoint", _endpoint("Failed", "new", reason), NAME)  # the waiter: failure state
        stub.add_response("describe_endpoint", _endpoint("Failed", "new", reason), NAME)
        with pytest.raises(RuntimeError, match=f"endpoint scones-endpoint is Failed: {reason}"):
            switch_endpoint(sm, name="scones-endpoint", config_name="new")
        stub.assert_no_pending_responses()

    # through the CLI, on moto with the endpoint's description answering Failed
    from moto.sagemaker.models import FakeEndpoint

    original = FakeEndpoint.response_object.fget

    def failed(self):
        return {**original(self), "EndpointStatus": "Failed", "FailureReason": reason}
    monkeypatch.setattr(FakeEndpoint, "response_object", property(failed))
    argv = ["deploy", "--region", REGION, "--role-arn", ROLE, "--bucket", "my-bucket", "--container", IMAGE,
            "--model", str(onnx_model)]
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: endpoint scones-endpoint is Failed: " + reason) and "Traceback" not in err


def test_cli_names_what_the_user_must_fix(aws_session, onnx_model, capsys, tmp_path):
    argv = ["deploy", "--region", REGION, "--role-arn", ROLE, "--bucket", "my-bucket", "--container", IMAGE]
    assert cli.main(argv + ["--model", str(tmp_path / "missing.onnx")]) == 2
    assert "error: no ONNX model at" in capsys.readouterr().err
    assert cli.main(argv + ["--model", str(onnx_model), "--variants"]) == 2
    assert "deploy once without variants first" in capsys.readouterr().err
    assert cli.main(argv + ["--model", str(onnx_model), "--endpoint-name", "e" * 50]) == 2
    assert "longer than 63" in capsys.readouterr().err


def test_cli_without_credentials_says_so(monkeypatch, capsys, tmp_path):
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup: fails before any request
    assert cli.main(["teardown", "--region", REGION]) == 2
    assert capsys.readouterr().err.startswith("error: no AWS credentials")
    assert cli.main(["teardown"]) == 2
    assert "no AWS region" in capsys.readouterr().err


# ---------------------------------------------------------------------------- stack create / update
class _S3:
    def __init__(self):
        self.uploads = []

    def upload_file(self, path, bucket, key):
        self.uploads.append((bucket, key))


def _stack(status: str, outputs: bool = True) -> dict:
    stack = {"StackName": "scones-workflow", "StackId": STACK_ID, "StackStatus": status,
             "CreationTime": dt.datetime(2026, 1, 1)}
    if outputs:
        stack["Outputs"] = [{"OutputKey": "CaptureS3Uri", "OutputValue": "s3://capture/data_capture"}]
    return {"Stacks": [stack]}


def _missing_stack(stubber: Stubber) -> None:
    stubber.add_client_error("describe_stacks", "ValidationError", "Stack with id scones-workflow does not exist",
                             400)


def test_existing_stack_is_updated_and_no_updates_is_success(tmp_path):
    cfn = boto3.client("cloudformation", region_name=REGION)
    config = DeployConfig(role_arn=ROLE, bucket="code", stack_name="scones-workflow", endpoint_name="scones-endpoint",
                          work_dir=tmp_path)
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", _stack("CREATE_COMPLETE"), {"StackName": "scones-workflow"})
        stub.add_response("update_stack", {"StackId": STACK_ID}, {"StackName": "scones-workflow", "TemplateBody": ANY,
                                                                  "Capabilities": ["CAPABILITY_IAM"], "Parameters": ANY})
        stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": "scones-workflow"})
        stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": "scones-workflow"})
        assert deploy_stack(cfn, _S3(), config, stamp="s1")["StackAction"] == "updated"

        stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": "scones-workflow"})
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.", 400)
        stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": "scones-workflow"})
        assert deploy_stack(cfn, _S3(), config, stamp="s2")["StackAction"] == "unchanged"
        stub.assert_no_pending_responses()


def test_a_stack_left_in_rollback_complete_is_replaced(tmp_path):
    cfn = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", _stack("ROLLBACK_COMPLETE", outputs=False), {"StackName": "scones-workflow"})
        stub.add_response("delete_stack", {}, {"StackName": "scones-workflow"})
        _missing_stack(stub)  # the delete waiter: gone
        stub.add_response("create_stack", {"StackId": STACK_ID}, {"StackName": "scones-workflow", "TemplateBody": ANY,
                                                                  "Capabilities": ["CAPABILITY_IAM"], "Parameters": ANY})
        stub.add_response("describe_stacks", _stack("CREATE_COMPLETE"), {"StackName": "scones-workflow"})
        stub.add_response("describe_stacks", _stack("CREATE_COMPLETE"), {"StackName": "scones-workflow"})
        config = DeployConfig(role_arn=ROLE, bucket="code", stack_name="scones-workflow",
                              endpoint_name="scones-endpoint", work_dir=tmp_path)
        outputs = deploy_stack(cfn, _S3(), config, stamp="s1")
        stub.assert_no_pending_responses()
    assert outputs["StackAction"] == "recreated" and outputs["CaptureS3Uri"] == "s3://capture/data_capture"


def test_deploy_stack_creates_the_functions_in_moto(aws_session, tmp_path):
    s3 = aws_session.client("s3")
    config = DeployConfig(role_arn=ROLE, bucket="my-bucket", stack_name="scones-workflow",
                          endpoint_name="scones-endpoint", work_dir=tmp_path)
    outputs = deploy_stack(aws_session.client("cloudformation"), s3, config, stamp="20260101-000000-000")
    functions = aws_session.client("lambda").list_functions()["Functions"]
    assert {"StateMachineArn", "DataBucketName", "CaptureBucketName", "CaptureS3Uri"} <= set(outputs)
    handlers = {f["FunctionName"].split("-")[-1]: f["Handler"] for f in functions}
    assert handlers == {"serializeImageData": "lambdas.serialize.lambda_handler",
                        "classifyImage": "lambdas.classify.lambda_handler",
                        "confidenceFilter": "lambdas.confidence_filter.lambda_handler"}
    environment = {f["FunctionName"].split("-")[-1]: f.get("Environment", {}).get("Variables", {}) for f in functions}
    assert environment["confidenceFilter"]["THRESHOLD_CONFIDENCE"] == str(constants.THRESHOLD)


# ---------------------------------------------------------------------------- teardown
def _fill(s3, bucket: str) -> int:
    """Two versions of one capture and a deleted one (a delete marker): four entries to remove."""
    s3.put_object(Bucket=bucket, Key="data_capture/scones-endpoint/AllTraffic/a.jsonl", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="data_capture/scones-endpoint/AllTraffic/a.jsonl", Body=b"{}\n{}")
    s3.put_object(Bucket=bucket, Key="data_capture/old.jsonl", Body=b"{}")
    s3.delete_object(Bucket=bucket, Key="data_capture/old.jsonl")
    return 4


def test_teardown_keeps_the_buckets_and_says_so_then_delete_data_empties_them(aws_session, onnx_model, tmp_path):
    sm, cfn, s3 = (aws_session.client(n) for n in ("sagemaker", "cloudformation", "s3"))
    deployment = deploy(aws_session, container_config(onnx_model, tmp_path), log=lambda *_: None)
    deploy(aws_session, container_config(onnx_model, tmp_path), log=lambda *_: None)
    capture_bucket = deployment.outputs["CaptureBucketName"]
    # moto's CloudFormation ignores VersioningConfiguration (test_scones_template checks the template has it)
    s3.put_bucket_versioning(Bucket=capture_bucket, VersioningConfiguration={"Status": "Enabled"})
    entries = _fill(s3, capture_bucket)

    first = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    assert first.ok and "endpoint scones-endpoint" in first.deleted and "stack scones-workflow" in first.deleted
    assert sum(item.startswith("endpoint config ") for item in first.deleted) == 2
    assert sum(item.startswith("model ") for item in first.deleted) == 2
    assert first.kept[f"bucket s3://{capture_bucket}"].startswith(f"{entries} object versions")
    assert f"bucket s3://{deployment.outputs['DataBucketName']}" in first.kept

    own = "s3://my-bucket/scones-workflow/ and s3://my-bucket/scones/"  # deploy --bucket: the user's, never deleted
    assert "your own bucket" in first.kept.pop(own)
    second = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    assert second.ok and second.deleted == [] and second.kept == first.kept  # a no-op that still says what is left

    purge = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow", delete_data=True)
    assert purge.ok and f"bucket s3://{capture_bucket} ({entries} object versions)" in purge.deleted
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"my-bucket"}
    last = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow", delete_data=True)
    assert last.ok and last.deleted == [] and last.kept == {}


def test_teardown_leaves_other_endpoints_models_alone(aws_session):
    sm = aws_session.client("sagemaker")
    for name in ("scones-endpoint-20260101-000000-000", "scones-endpoint-experiment", "other-model"):
        sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    report = teardown(sm, aws_session.client("cloudformation"), aws_session.client("s3"),
                          endpoint_name="scones-endpoint", stack_name="scones-workflow")
    assert report.deleted == ["model scones-endpoint-20260101-000000-000"]
    assert {m["ModelName"] for m in sm.list_models()["Models"]} == {"scones-endpoint-experiment", "other-model"}


def test_delete_failed_stack_is_reported_with_the_reason_not_raised(aws_session, capsys, monkeypatch):
    """What AWS does and moto does not: a bucket that cannot be deleted leaves the stack DELETE_FAILED,
    and botocore's stack_delete_complete waiter raises WaiterError."""
    sm, s3 = aws_session.client("sagemaker"), aws_session.client("s3")
    s3.create_bucket(Bucket="scones-workflow-capturebucket-abc123")
    cfn = boto3.client("cloudformation", region_name=REGION)
    reason = "The bucket you tried to delete is not empty. You must delete all versions in the bucket."
    stub = Stubber(cfn)
    resources = {"StackResources": [{"LogicalResourceId": "CaptureBucket", "ResourceType": "AWS::S3::Bucket",
                                     "PhysicalResourceId": "scones-workflow-capturebucket-abc123",
                                     "ResourceStatus": "CREATE_COMPLETE", "Timestamp": dt.datetime(2026, 1, 1)}]}
    event = {"StackId": STACK_ID, "EventId": "1", "StackName": "scones-workflow", "Timestamp": dt.datetime(2026, 1, 2),
             "LogicalResourceId": "CaptureBucket", "ResourceType": "AWS::S3::Bucket",
             "ResourceStatus": "DELETE_FAILED", "ResourceStatusReason": reason}
    stub.add_response("describe_stacks", _stack("CREATE_COMPLETE"), {"StackName": "scones-workflow"})
    stub.add_response("describe_stack_resources", resources, {"StackName": "scones-workflow"})
    stub.add_response("delete_stack", {}, {"StackName": "scones-workflow"})
    stub.add_response("describe_stacks", _stack("DELETE_FAILED"), {"StackName": "scones-workflow"})  # the waiter
    stub.add_response("describe_stacks", _stack("DELETE_FAILED"), {"StackName": "scones-workflow"})
    stub.add_response("describe_stack_events", {"StackEvents": [event]}, {"StackName": "scones-workflow"})
    with stub:
        report = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")
        stub.assert_no_pending_responses()
    assert not report.ok
    failure = report.failed["stack scones-workflow"]
    assert failure.startswith("DELETE_FAILED: CaptureBucket (AWS::S3::Bucket): The bucket you tried to delete is not empty")
    assert "run teardown again" in failure
    assert "bucket s3://scones-workflow-capturebucket-abc123" in report.kept
    assert any(line.startswith("FAILED stack scones-workflow: DELETE_FAILED") for line in report.lines())

    monkeypatch.setattr(boto3, "Session", lambda **_: type("S", (), {"client": lambda self, n: {
        "cloudformation": cfn}.get(n) or aws_session.client(n)})())
    with Stubber(cfn) as again:  # the CLI exits non-zero on a failed teardown
        again.add_response("describe_stacks", _stack("DELETE_FAILED"), {"StackName": "scones-workflow"})
        again.add_response("describe_stack_resources", resources, {"StackName": "scones-workflow"})
        again.add_response("delete_stack", {}, {"StackName": "scones-workflow"})
        again.add_response("describe_stacks", _stack("DELETE_FAILED"), {"StackName": "scones-workflow"})
        again.add_response("describe_stacks", _stack("DELETE_FAILED"), {"StackName": "scones-workflow"})
        again.add_response("describe_stack_events", {"StackEvents": [event]}, {"StackName": "scones-workflow"})
        assert cli.main(["teardown", "--region", REGION]) == 1
    assert "FAILED stack scones-workflow: DELETE_FAILED" in capsys.readouterr().out


# ---------------------------------------------------------------------------- lambda zip, test cases, executions
def test_generate_test_case_picks_an_image_from_the_bucket(aws_session):
    s3 = aws_session.client("s3")
    s3.create_bucket(Bucket="data")
    for key in ("test/a.png", "test/b.png", "test.lst"):
        s3.put_object(Bucket="data", Key=key, Body=b"x")
    event = generate_test_case(s3, "data", rng=random.Random(0))
    assert event["image_data"] == "" and event["s3_bucket"] == "data"
    assert event["s3_key"] in ("test/a.png", "test/b.png")
    with pytest.raises(FileNotFoundError, match="s3://data/nothing/"):
        generate_test_case(s3, "data", prefix="nothing/")


def test_lambda_zip_holds_an_importable_package_with_the_templates_handlers(tmp_path):
    archive = build_lambda_zip(tmp_path / "lambdas.zip")
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"lambdas/serialize.py", "lambdas/classify.py", "lambdas/confidence_filter.py", "lambdas/events.py",
            "lambdas/constants.py"} <= names
    extracted = tmp_path / "unzipped"
    zipfile.ZipFile(archive).extractall(extracted)
    template = TEMPLATE_PATH.read_text()
    handlers = ("lambdas.serialize.lambda_handler", "lambdas.classify.lambda_handler",
                "lambdas.confidence_filter.lambda_handler")
    for handler in handlers:
        assert f"Handler: {handler}" in template
    # In a fresh interpreter with only the zip on the path (the Lambda runtime: stdlib + boto3).
    check = ("import importlib, sys\n"
             f"for h in {handlers!r}:\n"
             "    m, f = h.rsplit('.', 1); assert callable(getattr(importlib.import_module(m), f))\n"
             "from lambdas.constants import THRESHOLD; print(THRESHOLD)\n"
             "assert not any(n.startswith(('scones_workflow', 'common', 'numpy', 'torch')) for n in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=extracted, capture_output=True, text=True,
                          env={"PYTHONPATH": str(extracted), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(constants.THRESHOLD)
    importlib.invalidate_caches()


def test_run_executions_reports_each_execution_as_the_local_backend_does():
    from scones_workflow.src.local.state_machine import ExecutionResult

    started = dt.datetime(2026, 1, 1, 12, 0, 0)

    class FakeSfn:
        def __init__(self):
            self.calls = 0

        def start_execution(self, stateMachineArn, input):
            return {"executionArn": f"arn:{json.loads(input)['s3_key']}"}

        def describe_execution(self, executionArn):
            self.calls += 1
            if self.calls <= 2:
                return {"status": "RUNNING"}
            times = {"startDate": started, "stopDate": started + dt.timedelta(milliseconds=850)}
            if executionArn.endswith("good.png"):
                body = {"inferences": [0.03, 0.97], "variant": "Challenger", "s3_key": "good.png"}
                return {"status": "SUCCEEDED", "output": json.dumps({"statusCode": 200, "body": body}), **times}
            return {"status": "FAILED", "error": "NotAnImage", "cause": "bad.png is not a PNG or JPEG", **times}

    events = [{"s3_bucket": "b", "s3_key": k, "image_data": ""} for k in ("good.png", "bad.png")]
    good, bad = run_executions(FakeSfn(), "arn:sm", events, poll_seconds=0)
    assert set(ExecutionResult.__dataclass_fields__) <= set(good)  # the notebook reads the same columns either way
    assert (good["status"], good["predicted_label"], good["confidence"], good["variant"]) == (
        "SUCCEEDED", constants.CLASS_NAMES[1], 0.97, "Challenger")
    assert good["latency_ms"] == 850.0 and good["error"] is None
    assert (bad["status"], bad["error"], bad["predicted_label"]) == ("FAILED", "NotAnImage", None)


# ---------------------------------------------------------------------------- issue 25: what moto hides
def _recorder(*sessions):
    """Every operation the given boto3 sessions' clients make, in order: [(IAM prefix, operation, API parameters)]
    (botocore's before-parameter-build event; clients copy their session's handlers when they are made)."""
    calls = []

    def record(model, params, **_):
        calls.append((model.service_model.signing_name, model.name, dict(params)))
    for session in sessions:
        session.events.register("before-parameter-build", record)
    return calls


def test_teardown_deletes_only_its_own_stacks_buckets(aws_session, onnx_model, tmp_path):
    """Defect 1. ListBuckets returns every bucket of the account, in every region; teardown --delete-data took
    each one named `<stack>-databucket-*` / `<stack>-capturebucket-*`. Now: the stack's own resources while it
    exists; once it is gone, this region's buckets (BucketRegion) that carry the stack's tag."""
    import boto3 as boto

    elsewhere = boto.Session(region_name="eu-west-1").client("s3")
    others = ["scones-workflow-databucket-otherregion1", "scones-workflow-capturebucket-otherregion2"]
    for name in others:  # another region's stack of the same name, tagged as the template tags them
        elsewhere.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        elsewhere.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
            {"Key": "scones-workflow:stack-name", "Value": "scones-workflow"}]})
    s3 = aws_session.client("s3")
    s3.create_bucket(Bucket="scones-workflow-databucket-notastack")  # same region and prefix, not the stack's
    deployment = deploy(aws_session, container_config(onnx_model, tmp_path), log=lambda *_: None)
    ours = {deployment.outputs["DataBucketName"], deployment.outputs["CaptureBucketName"]}
    sm, cfn = aws_session.client("sagemaker"), aws_session.client("cloudformation")

    kept = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")  # the stack exists
    assert {k.removeprefix("bucket s3://") for k in kept.kept if k.startswith("bucket ")} == ours
    gone = teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow", delete_data=True)
    assert {d.split()[1].removeprefix("s3://") for d in gone.deleted if d.startswith("bucket ")} == ours
    assert {b["Name"] for b in elsewhere.list_buckets(BucketRegion="eu-west-1")["Buckets"]} >= set(others)
    assert "scones-workflow-databucket-notastack" in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_a_bucket_in_another_region_is_refused_before_anything_is_uploaded(aws_session, onnx_model, tmp_path, capsys):
    """Defect 6. Lambda reads its code from a bucket in the function's region, SageMaker its artefacts from the
    endpoint's; moto accepts the mismatch. deploy refuses first, naming both regions, and makes nothing."""
    import boto3 as boto

    boto.Session(region_name="eu-west-1").client("s3").create_bucket(
        Bucket="bucket-in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    argv = ["deploy", "--region", REGION, "--role-arn", ROLE, "--bucket", "bucket-in-ireland", "--container", IMAGE,
            "--model", str(onnx_model)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "bucket-in-ireland is in eu-west-1 but the deploy region is us-east-1" in err
    assert aws_session.client("s3").list_objects_v2(Bucket="bucket-in-ireland").get("KeyCount", 0) == 0
    assert aws_session.client("cloudformation").list_stacks()["StackSummaries"] == []
    assert aws_session.client("sagemaker").list_models()["Models"] == []


@pytest.mark.parametrize("name", ["Scones-Endpoint", "scones_endpoint", "SCONES"])
def test_endpoint_names_sagemaker_would_lowercase_in_the_arn_are_refused(name, capsys):
    """Defect 7. The classify role's policy is built from the name as given; SageMaker's endpoint ARNs are lower
    case, so with capitals every InvokeEndpoint is denied. Refused in DeployConfig and by the template."""
    from cfnlint.decode.cfn_yaml import loads

    with pytest.raises(ValueError, match="lower-case letters, digits and hyphens"):
        DeployConfig(role_arn=ROLE, bucket="b", endpoint_name=name)
    assert cli.main(["deploy", "--region", REGION, "--role-arn", ROLE, "--bucket", "b", "--endpoint-name", name]) == 2
    assert "lower-case" in capsys.readouterr().err
    pattern = loads(TEMPLATE_PATH.read_text())["Parameters"]["EndpointName"]["AllowedPattern"]
    assert re.fullmatch(pattern, name) is None and re.fullmatch(pattern, "scones-endpoint-2")


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.index.v1+json",
                                        "application/vnd.docker.distribution.manifest.list.v2+json"])
def test_an_image_index_is_refused_before_anything_is_made(aws_session, onnx_model, tmp_path, media_type):
    """Defect 9. buildx pushes an OCI image index (provenance attestation) unless --provenance=false, and
    SageMaker answers CreateModel with "Unsupported manifest media type". ECR's BatchGetImage tells the type."""
    from tests.scones_aws_fixtures import push_image

    push_image(aws_session, media_type)
    with pytest.raises(ValueError, match="image index .*docker build --provenance=false"):
        deploy(aws_session, container_config(onnx_model, tmp_path), log=lambda *_: None)
    assert aws_session.client("cloudformation").list_stacks()["StackSummaries"] == []
    with pytest.raises(ValueError, match="is in eu-west-1, the endpoint in us-east-1"):
        deploy(aws_session, dataclasses.replace(container_config(onnx_model, tmp_path),
                                                container=IMAGE.replace("us-east-1", "eu-west-1")), log=lambda *_: None)
    readme = (PROJECT_DIR / "README.md").read_text()
    builds = [line for line in readme.splitlines() if line.startswith("docker build")]
    assert builds and all("--provenance=false" in line for line in builds)


def test_the_image_check_reads_ecrs_documented_answer():
    """BatchGetImage's documented response: images[].imageManifestMediaType, failures[] for a missing tag."""
    from scones_workflow.src.aws.preflight import check_image_manifest

    ecr = boto3.client("ecr", region_name=REGION)
    request = {"registryId": "123456789012", "repositoryName": "scones-server", "imageIds": [{"imageTag": "1"}],
               "acceptedMediaTypes": ANY}
    with Stubber(ecr) as stub:
        stub.add_response("batch_get_image", {"images": [{
            "registryId": "123456789012", "repositoryName": "scones-server", "imageId": {"imageTag": "1"},
            "imageManifest": "{}", "imageManifestMediaType": "application/vnd.oci.image.manifest.v1+json"}],
            "failures": []}, request)
        assert check_image_manifest(ecr, IMAGE, REGION) == "application/vnd.oci.image.manifest.v1+json"
        stub.add_response("batch_get_image", {"images": [], "failures": [{
            "imageId": {"imageTag": "1"}, "failureCode": "ImageTagDoesNotMatchDigest",
            "failureReason": "Requested image not found"}]}, request)
        with pytest.raises(ValueError, match="ECR has no such image .*Requested image not found"):
            check_image_manifest(ecr, IMAGE, REGION)


def test_training_defaults_to_a_gpu_new_accounts_can_get_and_the_instance_types_are_options(aws_session, onnx_model,
                                                                                              tmp_path, monkeypatch):
    """Defect 4. ml.p3.2xlarge was the only choice. Now a default of the algorithm's smallest GPU (ml.g4dn.xlarge),
    both instance types as options, and the account's quota read before anything is made. (training_job.py's
    own TrainingSpec default is engineer A's, on the shared SageMaker launcher.)"""
    assert DeployConfig(role_arn=ROLE, bucket="b").training_instance_type == "ml.g4dn.xlarge"
    args = cli.build_parser().parse_args(["deploy", "--role-arn", ROLE, "--bucket", "my-bucket", "--container", IMAGE,
                                          "--model", str(onnx_model), "--training-instance-type", "ml.g5.xlarge",
                                          "--endpoint-instance-type", "ml.c5.large"])
    config = cli.deploy_config(args)
    assert (config.training_instance_type, config.instance_type) == ("ml.g5.xlarge", "ml.c5.large")
    deployed = deploy(aws_session, dataclasses.replace(config, work_dir=tmp_path), log=lambda *_: None)
    variants = aws_session.client("sagemaker").describe_endpoint_config(
        EndpointConfigName=deployed.endpoint_config)["ProductionVariants"]
    assert [v["InstanceType"] for v in variants] == ["ml.c5.large"]


def _quotas(value: float) -> dict:
    """ListServiceQuotas' documented response for SageMaker's per-instance-type quota."""
    return {"Quotas": [{"ServiceCode": "sagemaker", "ServiceName": "Amazon SageMaker", "QuotaCode": "L-A1B2C3D4",
                        "QuotaName": "ml.g4dn.xlarge for training job usage", "Value": value, "Unit": "None",
                        "Adjustable": True, "GlobalQuota": False}]}


def test_a_zero_quota_is_refused_naming_what_to_request():
    from scones_workflow.src.aws.preflight import check_quota

    quotas = boto3.client("service-quotas", region_name=REGION)
    with Stubber(quotas) as stub:
        stub.add_response("list_service_quotas", _quotas(0.0), {"ServiceCode": "sagemaker"})
        with pytest.raises(ValueError, match=r"quota 'ml.g4dn.xlarge for training job usage' \(L-A1B2C3D4\) is 0, "
                                             r"this deploy needs 1: request an increase"):
            check_quota(quotas, "ml.g4dn.xlarge", "training job usage", 1)
        stub.add_response("list_service_quotas", _quotas(2.0), {"ServiceCode": "sagemaker"})
        assert check_quota(quotas, "ml.g4dn.xlarge", "training job usage", 1) == 2.0
        stub.add_client_error("list_service_quotas", "AccessDeniedException", "not authorized", 400)
        assert check_quota(quotas, "ml.g4dn.xlarge", "training job usage", 1) is None  # SageMaker will say it
        stub.assert_no_pending_responses()


# ---------------------------------------------------------------------------- issue 25: scaling, plans, the policy
def _stack_updates(calls) -> list[tuple[str, tuple[str, ...]]]:
    """(operation, scaled variants) of each stack create/update, and the endpoint operations, in order."""
    out = []
    for _, operation, params in calls:
        if operation in ("CreateStack", "UpdateStack"):
            values = {p["ParameterKey"]: p.get("ParameterValue") for p in params["Parameters"]}
            out.append((operation, tuple(v for v in (values.get("ScaledVariant1"), values.get("ScaledVariant2")) if v)))
        elif operation in ("CreateEndpoint", "UpdateEndpoint"):
            out.append((operation, (params.get("RetainAllVariantProperties", False),)))
    return out


def test_scaling_is_registered_after_inservice_and_deregistered_around_an_instance_type_change(aws_session, onnx_model,
                                                                                                tmp_path):
    """AWS's order for autoscaled endpoints (endpoint-scaling-update.html): register once the endpoint serves the
    variant; a model-only update keeps the registration (and the counts scaling set: RetainAllVariantProperties);
    an update that changes a scaled variant's instance type, or removes it, deregisters first and registers after."""
    calls = _recorder(aws_session)
    config = container_config(onnx_model, tmp_path)
    quiet = {"log": lambda *_: None}
    first = deploy(aws_session, config, **quiet)
    assert first.scaled == ("AllTraffic",)
    assert _stack_updates(calls) == [("CreateStack", ()), ("CreateEndpoint", (False,)), ("UpdateStack", ("AllTraffic",))]
    order = [op for _, op, _ in calls]
    assert order.index("UpdateStack") > max(i for i, op in enumerate(order) if op == "DescribeEndpoint")  # InService

    calls.clear()
    deploy(aws_session, config, **quiet)  # a new model only
    assert _stack_updates(calls) == [("UpdateStack", ("AllTraffic",)), ("UpdateEndpoint", (True,))]

    calls.clear()
    deploy(aws_session, dataclasses.replace(config, instance_type="ml.c5.xlarge"), **quiet)
    assert _stack_updates(calls) == [("UpdateStack", ()), ("UpdateEndpoint", (False,)), ("UpdateStack", ("AllTraffic",))]

    calls.clear()
    canary = deploy(aws_session, dataclasses.replace(config, instance_type="ml.c5.xlarge", variants=True), **quiet)
    assert canary.scaled == ("Primary", "Challenger")  # AllTraffic is removed: deregistered first
    assert _stack_updates(calls) == [("UpdateStack", ()), ("UpdateEndpoint", (False,)),
                                     ("UpdateStack", ("Primary", "Challenger"))]
    stack = aws_session.client("cloudformation").describe_stacks(StackName="scones-workflow")["Stacks"][0]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert parameters["InvocationsPerInstanceTarget"] == str(config.scaling.target)
    assert parameters["CodeKey"] == f"scones-workflow/{canary.stamp}/lambdas.zip"  # the scaling update kept the code

    calls.clear()
    fixed = deploy(aws_session, dataclasses.replace(config, instance_type="ml.c5.xlarge", scaling=dataclasses.replace(
        config.scaling, enabled=False)), **quiet)
    assert fixed.scaled == () and _stack_updates(calls)[0] == ("UpdateStack", ())


def test_the_scaling_target_is_the_load_tests_throughput_with_awss_formula(tmp_path):
    """SageMakerVariantInvocationsPerInstance = MAX_RPS x SAFETY_FACTOR (0.5 to start) x 60, per minute
    (endpoint-scaling-loadtest.html); MAX_RPS from the load test's recorded endpoint throughput."""
    from scones_workflow.src.aws import config as aws_config

    record = tmp_path / "metrics.json"
    record.write_text(json.dumps({"summary": {aws_config.LOAD_TEST_KEY: 264.7}}))
    assert aws_config.recorded_max_rps(record) == 264.7
    assert aws_config.invocations_target(264.7) == 7941
    assert aws_config.recorded_max_rps(tmp_path / "none.json") == aws_config.FALLBACK_MAX_RPS
    assert aws_config.ScalingConfig(max_rps=10).target == 300
    with pytest.raises(ValueError, match="min-instances <= --max-instances"):
        aws_config.ScalingConfig(min_instances=3, max_instances=2)
    from cfnlint.decode.cfn_yaml import loads

    default = loads(TEMPLATE_PATH.read_text())["Parameters"]["InvocationsPerInstanceTarget"]["Default"]
    assert int(default) == aws_config.invocations_target(aws_config.FALLBACK_MAX_RPS)


def test_a_serverless_variant_has_no_capture_no_scaling_and_one_variant(aws_session, onnx_model, tmp_path):
    """Serverless inference excludes data capture and multiple variants (serverless-endpoints.html feature
    exclusions) and scales itself; the option trades the always-on instance for cold starts."""
    config = container_config(onnx_model, tmp_path, serverless_memory_mb=2048)
    deployed = deploy(aws_session, config, log=lambda *_: None)
    described = aws_session.client("sagemaker").describe_endpoint_config(EndpointConfigName=deployed.endpoint_config)
    variant = described["ProductionVariants"][0]
    assert variant["ServerlessConfig"]["MemorySizeInMB"] == 2048 and "InstanceType" not in variant
    assert not described.get("DataCaptureConfig") and deployed.scaled == ()  # moto answers {} for none
    with pytest.raises(ValueError, match="one production variant"):
        container_config(onnx_model, tmp_path, serverless_memory_mb=2048, variants=True)


MUTATING = re.compile(r"(Create|Update|Delete|Put|Register|Deregister|Start|Stop|Upload|Complete|Abort|Tag|Untag|"
                      r"Attach|Detach|Pass|Subscribe|Set|Invoke)")


def _price_list(instance: str, use: str, usd: str) -> str:
    """One PriceList item as the Price List API documents it (a JSON string per product)."""
    return json.dumps({"product": {"productFamily": "ML Instance", "attributes": {
        "instanceName": instance, "regionCode": REGION, "usagetype": f"USE1-{use}:{instance}"}, "sku": "SKU1"},
        "terms": {"OnDemand": {"SKU1.T1": {"priceDimensions": {"SKU1.T1.D1": {
            "unit": "Hrs", "pricePerUnit": {"USD": usd}, "description": f"{instance} {use}"}}}}}})


def test_plans_say_everything_and_change_nothing(aws_session, onnx_model, tmp_path, capsys, monkeypatch):
    """deploy --plan and teardown --plan make only read calls (no mutating operation recorded) and name the
    resources, instance types and hourly prices (Price List API, stubbed with its documented shape)."""
    from scones_workflow.src.aws.plan import deploy_plan
    from scones_workflow.src.aws.teardown import teardown_plan

    deploy(aws_session, container_config(onnx_model, tmp_path), log=lambda *_: None)
    pricing = boto3.client("pricing", region_name="us-east-1")
    calls = _recorder(aws_session)
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            _price_list("ml.m5.xlarge", "Train", "0.2300"), _price_list("ml.m5.xlarge", "Host", "0.2304")]},
            {"ServiceCode": "AmazonSageMaker", "Filters": ANY})
        lines = deploy_plan(aws_session, container_config(onnx_model, tmp_path, variants=True), pricing)
    text = "\n".join(lines)
    assert "Primary, Challenger, each 1 x ml.m5.xlarge ($0.2304/h on demand per instance)" in text
    assert "blue/green update from scones-endpoint-" in text and "stack scones-workflow: update" in text
    assert "auto scaling of AllTraffic: deregistered before the update" in text
    assert "at most 8 x ml.m5.xlarge" in text
    s3, sm, cfn = (aws_session.client(n) for n in ("s3", "sagemaker", "cloudformation"))
    plan = teardown_plan(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    assert plan[0].startswith("delete stack scones-workflow") and "auto scaling of AllTraffic" in plan[0]
    assert sum(line.startswith("keep bucket s3://scones-workflow-") for line in plan) == 2
    assert not [op for _, op, _ in calls if MUTATING.match(op)], [op for _, op, _ in calls]
    assert sm.describe_endpoint(EndpointName="scones-endpoint")["EndpointStatus"] == "InService"

    pricing_off = boto3.client("pricing", region_name="us-east-1")  # no permission: the plan points at the page
    with Stubber(pricing_off) as stub:
        stub.add_client_error("get_products", "AccessDeniedException", "not authorized", 400)
        lines = deploy_plan(aws_session, DeployConfig(role_arn=ROLE, bucket="my-bucket"), pricing_off)
    assert "1 x ml.g4dn.xlarge (price: see https://aws.amazon.com/sagemaker/pricing/)" in "\n".join(lines)
    monkeypatch.setattr(boto3, "Session", lambda **_: aws_session)
    assert cli.main(["teardown", "--region", REGION, "--plan", "--delete-data"]) == 0
    assert "delete bucket s3://scones-workflow-" in capsys.readouterr().out


POLICY_PATH = PROJECT_DIR / "iam" / "deployer-policy.json"
# Operations whose IAM action is not `<prefix>:<Operation>` (the Service Authorization Reference's action tables).
IAM_ACTIONS = {
    ("s3", "ListBuckets"): ["s3:ListAllMyBuckets"], ("s3", "ListObjectsV2"): ["s3:ListBucket"],
    ("s3", "ListObjects"): ["s3:ListBucket"], ("s3", "HeadBucket"): ["s3:ListBucket"],
    ("s3", "ListObjectVersions"): ["s3:ListBucketVersions"], ("s3", "HeadObject"): ["s3:GetObject"],
    ("s3", "CreateMultipartUpload"): ["s3:PutObject"], ("s3", "UploadPart"): ["s3:PutObject"],
    ("s3", "CompleteMultipartUpload"): ["s3:PutObject"],
    ("s3", "DeleteObjects"): ["s3:DeleteObject", "s3:DeleteObjectVersion"],
    # "To be able to pass this role to SageMaker, the caller of this API must have the iam:PassRole permission"
    # (CreateTrainingJob RoleArn, CreateModel ExecutionRoleArn in the SageMaker API reference)
    ("sagemaker", "CreateModel"): ["sagemaker:CreateModel", "iam:PassRole"],
    ("sagemaker", "CreateTrainingJob"): ["sagemaker:CreateTrainingJob", "iam:PassRole"],
}
# What CloudFormation does with the deployer's credentials (no service role) for each resource type the template
# holds: create, update and delete calls, the code and definition it reads from S3, the roles it passes, and
# for auto scaling the service-linked role and the alarms target tracking manages.
CFN_ACTIONS = {
    "AWS::S3::Bucket": ["s3:CreateBucket", "s3:PutEncryptionConfiguration", "s3:PutBucketVersioning",
                        "s3:PutLifecycleConfiguration", "s3:PutBucketOwnershipControls",
                        "s3:PutBucketPublicAccessBlock", "s3:PutBucketTagging", "s3:DeleteBucket"],
    "AWS::S3::BucketPolicy": ["s3:PutBucketPolicy", "s3:GetBucketPolicy", "s3:DeleteBucketPolicy"],
    "AWS::IAM::Role": ["iam:CreateRole", "iam:GetRole", "iam:PutRolePolicy", "iam:AttachRolePolicy",
                       "iam:DeleteRolePolicy", "iam:DetachRolePolicy", "iam:DeleteRole"],
    "AWS::Lambda::Function": ["lambda:CreateFunction", "lambda:GetFunction", "lambda:UpdateFunctionCode",
                              "lambda:UpdateFunctionConfiguration", "lambda:DeleteFunction", "s3:GetObject",
                              "iam:PassRole"],
    "AWS::StepFunctions::StateMachine": ["states:CreateStateMachine", "states:DescribeStateMachine",
                                         "states:UpdateStateMachine", "states:DeleteStateMachine", "s3:GetObject",
                                         "iam:PassRole"],
    "AWS::SNS::Topic": ["sns:CreateTopic", "sns:GetTopicAttributes", "sns:DeleteTopic"],
    "AWS::SNS::Subscription": ["sns:Subscribe", "sns:Unsubscribe", "sns:GetTopicAttributes"],
    "AWS::CloudWatch::Alarm": ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
    "AWS::ApplicationAutoScaling::ScalableTarget": [
        "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DeregisterScalableTarget", "iam:CreateServiceLinkedRole",
        "sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"],
    "AWS::ApplicationAutoScaling::ScalingPolicy": [
        "application-autoscaling:PutScalingPolicy", "application-autoscaling:DescribeScalingPolicies",
        "application-autoscaling:DeleteScalingPolicy", "cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms",
        "cloudwatch:DeleteAlarms"],
}


def _allowed(action: str, policy: dict) -> bool:
    import fnmatch

    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
            return True
    return False


def test_the_deployer_policy_covers_every_call_deploy_teardown_and_the_plans_make(aws_session, onnx_model, tmp_path,
                                                                                    monkeypatch):
    """Defect 5. Every AWS operation that deploy (container and built-in, one and two variants, an instance-type
    change), the notebook's test executions, both plans and teardown --delete-data make, recorded from
    botocore's events, is an action the shipped deployer policy allows: the policy cannot drift from the code."""
    policy = json.loads(POLICY_PATH.read_text())
    calls = _recorder(aws_session)
    made = boto3.session.Session.__init__

    def recorded(self, *args, **kwargs):  # sessions made inside the code (cloudpathlib's uploads)
        made(self, *args, **kwargs)
        self.events.register("before-parameter-build", lambda model, params, **_: calls.append(
            (model.service_model.signing_name, model.name, {})))
    monkeypatch.setattr(boto3.session.Session, "__init__", recorded)
    quiet = {"log": lambda *_: None}
    config = container_config(onnx_model, tmp_path)
    deploy(aws_session, config, **quiet)
    deploy(aws_session, dataclasses.replace(config, variants=True, instance_type="ml.c5.xlarge"), **quiet)
    deploy_and_run(_staged(tmp_path / "staged"), DeployConfig(role_arn=ROLE, bucket="my-bucket"), executions=0,
                   session=aws_session)
    machine = aws_session.client("cloudformation").describe_stacks(StackName="scones-workflow")["Stacks"][0]["Outputs"]
    with pytest.raises(TimeoutError):  # moto's Step Functions leaves it RUNNING: the calls are what counts here
        run_executions(aws_session.client("stepfunctions"), next(o["OutputValue"] for o in machine if o["OutputKey"] ==
                       "StateMachineArn"), [{"s3_bucket": "b", "s3_key": "k", "image_data": ""}], timeout=0,
                       poll_seconds=0)
    from scones_workflow.src.aws.plan import deploy_plan
    from scones_workflow.src.aws.teardown import teardown_plan

    pricing = boto3.client("pricing", region_name="us-east-1")
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": []}, None)
        deploy_plan(aws_session, config, pricing)
    calls.append(("pricing", "GetProducts", {}))
    sm, cfn, s3 = (aws_session.client(n) for n in ("sagemaker", "cloudformation", "s3"))
    teardown_plan(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")
    teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow")  # buckets kept
    teardown(sm, cfn, s3, endpoint_name="scones-endpoint", stack_name="scones-workflow", delete_data=True)  # found later

    operations = {(prefix, op) for prefix, op, _ in calls}
    assert {("sagemaker", "UpdateEndpoint"), ("cloudformation", "UpdateStack"), ("states", "StartExecution"),
            ("ecr", "BatchGetImage"), ("servicequotas", "ListServiceQuotas"), ("s3", "DeleteObjects"),
            ("s3", "GetBucketTagging"), ("sagemaker", "CreateTrainingJob")} <= operations
    needed = {action for prefix, op in operations for action in IAM_ACTIONS.get((prefix, op), [f"{prefix}:{op}"])}
    assert sorted(a for a in needed if not _allowed(a, policy)) == []


def test_the_deployer_policy_covers_what_cloudformation_does_for_each_resource_of_the_template():
    from cfnlint.decode.cfn_yaml import loads

    policy = json.loads(POLICY_PATH.read_text())
    types = {r["Type"] for r in loads(TEMPLATE_PATH.read_text())["Resources"].values()}
    assert types <= set(CFN_ACTIONS), f"add the new resource types' actions: {types - set(CFN_ACTIONS)}"
    missing_actions = sorted({a for t in types for a in CFN_ACTIONS[t] if not _allowed(a, policy)})
    assert missing_actions == []
    # least privilege: no service-wide wildcard, and the role passing is tied to the services that use the roles
    assert not [a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                if a.endswith(":*") or a == "*"]
    passes = [s for s in policy["Statement"] if s["Action"] == "iam:PassRole"]
    assert passes and all("iam:PassedToService" in s["Condition"]["StringEquals"] for s in passes)


def test_scaling_is_registered_again_when_a_failed_endpoint_is_replaced():
    """A Failed endpoint is deleted and created again (and deleting an endpoint deregisters its variants), so
    deploy must not keep the stack's registration through it: it deregisters, then registers on the new one."""
    from scones_workflow.src.aws.endpoint import variant_fleets
    from scones_workflow.src.aws.scaling import kept_during_update

    failed = _endpoint("Failed", "old", "ping failed")
    assert variant_fleets(None, failed) == {}  # no describe_endpoint_config call on a Failed endpoint
    assert kept_during_update(("AllTraffic",), {}, {"AllTraffic": "ml.m5.xlarge"}) == ()
    assert kept_during_update(("AllTraffic",), {"AllTraffic": "ml.m5.xlarge"}, {"AllTraffic": "ml.m5.xlarge"}) == (
        "AllTraffic",)
