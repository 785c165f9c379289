"""The model from SageMaker's built-in image-classification algorithm (the seed's setup): a training job on
the `.lst` + PNG channels, its hyperparameters checked against the algorithm's documented rules, run by
the portfolio's one launcher (common.sagemaker_jobs: create, wait, Stopped and Failed with their reason)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.sagemaker_jobs import Algorithm, Channel, Compute, TrainingJobSpec, start, wait

from ..lambdas.constants import CLASS_NAMES


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


def training_job_spec(spec: TrainingSpec, image_uri: str) -> TrainingJobSpec:
    """The built-in classifier's job on the .lst + image layout (the seed's setup), for the one launcher."""
    def channel(name: str, suffix: str) -> Channel:
        return Channel(name, f"{spec.data_s3.rstrip('/')}/{suffix}", content_type="application/x-image")
    hyperparameters = {**HYPERPARAMETERS[spec.mode], "num_classes": str(len(CLASS_NAMES)),
                       "num_training_samples": str(spec.num_training_samples), "epochs": str(spec.epochs),
                       "mini_batch_size": "32", "learning_rate": "0.001", "augmentation_type": "crop_color"}
    check_hyperparameters(hyperparameters)
    return TrainingJobSpec(
        name=spec.job_name, role_arn=spec.role_arn, algorithm=Algorithm(image_uri, hyperparameters),
        channels=(channel("train", "train/"), channel("validation", "test/"),
                  channel("train_lst", "train.lst"), channel("validation_lst", "test.lst")),
        output_s3=spec.output_s3, compute=Compute(spec.instance_type, max_run_seconds=3600, volume_gb=30))


def train(session: Any, spec: TrainingSpec, image_uri: str, *, poll_seconds: float = 30,
          log: Callable[[str], None] = print) -> str:
    """Run the training job to completion; returns the model artefact URI (TrainingJobFailed, with the job's
    FailureReason, when it ends Failed or Stopped)."""
    start(training_job_spec(spec, image_uri), session)
    job = wait(spec.job_name, session, poll_seconds=poll_seconds, log=log)
    return job.model_artifacts.s3_model_artifacts
