"""TRAIN_ON="sagemaker" for the bike project: an AutoGluon fit through autogluon.cloud's
TabularCloudPredictor, in moto: `fit(wait=False)` creates the job with spot settings (its request checked
against botocore's service model), the training table goes up (as CSV: autogluon.cloud's only format), and
a finished job's model.tar.gz comes back as a local TabularPredictor that predicts the typed table."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from bike_sharing_autogluon.src import cloud, train
from common import sagemaker_jobs as sj
from tests.scones_aws_fixtures import REGION, ROLE, aws_session  # noqa: F401 (a fixture)
from tests.service_model_check import record_calls, request_problems

pytest.importorskip("autogluon.cloud", reason="autogluon.cloud is installed by `make venv` (requirements-nodeps.txt)")


def _table(rows: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    hour = rng.integers(0, 24, rows)
    return pd.DataFrame({"hour": hour, "season": rng.choice([1, 2, 3, 4], rows),
                         "block": np.arange(rows) % 4,
                         "count": np.log1p(hour * 10.0 + rng.random(rows))}).astype({"season": "category"})


def _cloud(**compute) -> cloud.CloudFit:
    return cloud.CloudFit(sj.SageMakerSettings(ROLE, "my-bucket", sj.Compute(**{"instance_type": "ml.m5.2xlarge",
                                                                                "max_run_seconds": 3600, **compute})))


INIT = {"label": "count", "eval_metric": "root_mean_squared_error", "groups": "block"}
FIT = {"time_limit": 60, "num_bag_folds": 4, "num_bag_sets": 1, "hyperparameters": {"GBM": {"num_boost_round": 10}}}


def test_fit_without_waiting_creates_a_spot_job_that_meets_the_service_model(aws_session, tmp_path, monkeypatch):
    calls = record_calls(monkeypatch)
    table = _table()
    predictor = cloud.start_fit(table, INIT, FIT, path=tmp_path / "count", cloud=_cloud(spot=True))
    request = next(p for op, p in calls if op == "CreateTrainingJob")
    assert request_problems("sagemaker", "CreateTrainingJob", request) == []
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("/autogluon:1.6.3-cpu-amzn2023")
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.2xlarge" and request["RoleArn"] == ROLE
    assert predictor.get_fit_job_status() == "Completed"  # moto completes at once
    # the table went up as CSV: the same values, the category read back as its integers
    channel = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "train_data")
    bucket, key = sj.split_s3(channel["DataSource"]["S3DataSource"]["S3Uri"])
    aws_session.client("s3").download_file(bucket, key, str(tmp_path / "up.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "up.csv"), table.astype({"season": "int64"}))
    ag_args = json.loads((tmp_path / "count-sagemaker" / "utils" / "ag_args.json").read_text())
    assert ag_args["predictor_init_args"] == INIT and ag_args["predictor_fit_args"]["num_bag_folds"] == 4


def test_a_finished_job_comes_back_as_a_local_predictor(aws_session, tmp_path, monkeypatch):
    """moto writes no artefact: a TabularPredictor trained here on what the job reads (the CSV) stands in
    for what it saved in /opt/ml/model, uploaded where the job's description says."""
    from autogluon.tabular import TabularPredictor

    table = _table()
    table.to_csv(tmp_path / "as_shipped.csv", index=False)
    trained = TabularPredictor(**INIT, path=str(tmp_path / "made"), verbosity=0).fit(
        pd.read_csv(tmp_path / "as_shipped.csv"), num_bag_folds=4, num_bag_sets=1,
        hyperparameters={"GBM": {"num_boost_round": 10}})
    trained.save()
    wait = sj.wait

    def upload_then_wait(name, session, **kwargs):
        described = session.client("sagemaker").describe_training_job(TrainingJobName=name)
        with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "made", arcname=".")
        session.client("s3").upload_file(str(tmp_path / "model.tar.gz"),
                                         *sj.split_s3(described["ModelArtifacts"]["S3ModelArtifacts"]))
        return wait(name, session, poll_seconds=0, log=lambda _: None)

    monkeypatch.setattr(sj, "wait", upload_then_wait)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    predictor, job = cloud.fit_on_sagemaker(table, INIT, FIT, path=tmp_path / "count", cloud=_cloud())
    assert type(predictor).__name__ == "TabularPredictor"
    typed = table.drop(columns="count")  # as fit_stage predicts: season still a category
    np.testing.assert_allclose(predictor.predict(typed), trained.predict(pd.read_csv(tmp_path / "as_shipped.csv")))
    assert job["training_job"].startswith("bike-count-") and job["instance_type"] == "ml.m5.2xlarge"


def test_what_cannot_go_to_autogluon_cloud_is_refused_or_kept_local():
    with pytest.raises(ValueError, match="INSTANCE_COUNT=2: autogluon.cloud trains on one instance"):
        _cloud(instance_count=2)
    # the hpo stage's search spaces do not serialise into ag_args.json: that stage trains locally
    with pytest.raises(TypeError):
        json.dumps(train.search_space(2)[0])
