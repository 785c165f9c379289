"""What a deploy is asked to do: one frozen DeployConfig, passed down from the CLI or the notebook."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..lambdas.constants import THRESHOLD

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = PROJECT_DIR / "models" / "scones_classifier.onnx"


@dataclass(frozen=True)
class DeployConfig:
    """A deploy: the CLI builds it from its options, the notebook from SCONES_ROLE_ARN and SCONES_BUCKET;
    a variant is `dataclasses.replace(config, ...)`."""
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
