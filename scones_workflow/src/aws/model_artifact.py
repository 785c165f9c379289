"""This deploy's new model: the ONNX model in `model.tar.gz` for the bring-your-own container, or a training
job of the built-in algorithm on the staged data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.sagemaker_jobs import pack_model

from ..lambdas.constants import CLASS_NAMES
from .config import DeployConfig
from .names import versioned_name
from .training_job import TrainingSpec, image_classification_uri, train


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
    return pack_model({"model.onnx": onnx_path, "metadata.json": meta_path}, out_dir / "model.tar.gz")


def model_artifact(session: Any, config: DeployConfig, stamp: str, staged: Any = None) -> tuple[str, str, str | None]:
    """(image URI, model data URI, training job name) for this deploy's new model, made with the deploy's boto3
    `session` (the launcher's SDK TrainingJob takes the session itself)."""
    s3 = session.client("s3")
    if config.container:
        archive = package_model(config.model_path, config.work_dir / stamp)
        key = f"scones/models/{stamp}/model.tar.gz"
        s3.upload_file(str(archive), config.bucket, key)
        return config.container, f"s3://{config.bucket}/{key}", None
    from .. import data

    if staged is None:
        raise ValueError("the built-in algorithm trains on staged data: pass staged=data.stage(...)")
    data_s3 = f"s3://{config.bucket}/scones/data"
    data.upload(staged, data_s3)
    region = session.region_name
    image_uri = image_classification_uri(region)
    spec = TrainingSpec(job_name=versioned_name(config.endpoint_name, stamp), role_arn=config.role_arn,
                        data_s3=data_s3, output_s3=f"s3://{config.bucket}/scones/models",
                        num_training_samples=len(staged.train), epochs=config.epochs,
                        instance_type=config.training_instance_type, mode=config.training_mode)
    return image_uri, train(session, spec, image_uri), spec.job_name
