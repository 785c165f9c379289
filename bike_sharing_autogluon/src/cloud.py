"""TRAIN_ON="sagemaker": each AutoGluon fit of a stage runs as a SageMaker training job through
autogluon.cloud's `TabularCloudPredictor` (AutoGluon's own image, autogluon:1.6.3-cpu-amzn2023 for the
pinned 1.6.3), with the same `TabularPredictor` arguments as the local fit; the trained predictor comes
back as a local `TabularPredictor` (`to_local_predictor`), so the leaderboards, out-of-fold and test
predictions and the report are computed as they are locally.

What does not move: the direct LightGBM/CatBoost/XGBoost stages (seconds on a laptop) and the hpo stage,
whose search spaces (autogluon.common.space objects) cannot be written into autogluon.cloud's
ag_args.json; they train locally, and the notebook says so. autogluon.cloud trains on one instance
(AutoGluon's multi-node path is Ray, `fold_fitting_strategy="parallel_distributed"` on a Ray cluster).
A spot job has no checkpoints here: an interrupted fit starts again within MaxWaitTimeInSeconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import sagemaker_jobs as sj

if TYPE_CHECKING:
    import pandas as pd

FRAMEWORK_VERSION = "1.6"  # autogluon.cloud resolves it to the image of the newest 1.6 release (1.6.3)


@dataclass(frozen=True)
class CloudFit:
    """Where AutoGluon fits run on SageMaker (the notebook's parameters)."""
    settings: sj.SageMakerSettings

    def __post_init__(self):
        if self.settings.compute.instance_count != 1:
            raise ValueError(f"INSTANCE_COUNT={self.settings.compute.instance_count}: autogluon.cloud trains on one "
                             "instance (AutoGluon's multi-node path is Ray); use a larger INSTANCE_TYPE instead")


def overrides(compute: sj.Compute) -> dict[str, dict]:
    """CreateTrainingJob fields autogluon.cloud has no argument for: managed spot and its MaxWait."""
    if not compute.spot:
        return {}
    return {"CreateTrainingJob": {"EnableManagedSpotTraining": True,
                                  "StoppingCondition": {"MaxRuntimeInSeconds": compute.max_run_seconds,
                                                        "MaxWaitTimeInSeconds": compute.max_wait}}}


def start_fit(train: pd.DataFrame, init_args: dict, fit_args: dict, *, path: Path, cloud: CloudFit) -> Any:
    """Upload `train` and start the fit; returns the TabularCloudPredictor (its job runs on:
    `get_fit_job_status()` polls it). autogluon.cloud always ships the table as CSV, so AutoGluon on
    SageMaker infers the column types again: the datetime text is read as a datetime, but season and
    weather (integer-valued categories here) arrive as numbers. The local fit treats them as categories;
    predicting with the categorical table still works (AutoGluon casts input to the types it trained on)."""
    from autogluon.cloud import TabularCloudPredictor

    settings = cloud.settings
    name = sj.job_name(f"bike-{init_args['label']}")
    work = Path(path).with_name(f"{Path(path).name}-sagemaker")
    predictor = TabularCloudPredictor(local_output_path=str(work),
                                      cloud_output_path=f"s3://{settings.bucket}/{settings.prefix}/bike/{name}",
                                      role=settings.role_arn, verbosity=1)
    predictor.fit(train, predictor_init_args=init_args, predictor_fit_args=fit_args,
                  framework_version=FRAMEWORK_VERSION, instance_type=settings.compute.instance_type, wait=False,
                  job_name=name, timeout=settings.compute.max_run_seconds,
                  backend_overrides=overrides(settings.compute) or None)
    return predictor


def fit_on_sagemaker(train: pd.DataFrame, init_args: dict, fit_args: dict, *, path: Path,
                     cloud: CloudFit) -> tuple[Any, dict]:
    """The fit as a training job, to the end: (the trained local TabularPredictor, saved at `path`, and the
    job's timings: training and billable seconds). Failed or Stopped raises TrainingJobFailed."""
    import boto3

    predictor = start_fit(train, init_args, fit_args, path=path, cloud=cloud)
    session = boto3.Session(region_name=cloud.settings.region)
    job = sj.wait(predictor.info()["fit_job"]["name"], session)
    Path(path).mkdir(parents=True, exist_ok=True)  # the predictor is unpacked into <path>/AutoGluonModels
    return predictor.to_local_predictor(save_path=str(path)), sj.timings(job)
