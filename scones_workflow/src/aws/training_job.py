"""The model from SageMaker's built-in image-classification algorithm (the seed's setup): a training job on
the `.lst` + PNG channels, its hyperparameters checked against the algorithm's documented rules."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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
