"""What a deploy is asked to do: one frozen DeployConfig, passed down from the CLI or the notebook."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..lambdas.constants import THRESHOLD

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = PROJECT_DIR / "models" / "scones_classifier.onnx"
LOAD_TEST_RECORD = PROJECT_DIR.parent / "reports" / "scones_workflow" / "metrics.json"
LOAD_TEST_KEY = "endpoint images per second (ONNX Runtime, concurrent clients)"

# The built-in image classifier trains on GPUs only (P2/P3/G4dn/G5 in its "EC2 instance recommendation":
# https://docs.aws.amazon.com/sagemaker/latest/dg/image-classification.html). ml.g4dn.xlarge is the smallest and
# cheapest of them (one T4); ml.p3.2xlarge, the seed's (one V100), costs more per hour and new accounts often have a
# quota of 0 for it. deploy checks the account's quota before it starts (preflight.check_quota).
DEFAULT_TRAINING_INSTANCE = "ml.g4dn.xlarge"
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.xlarge"  # 4 vCPU, 16 GiB: the ONNX model serves on CPU (no torch in the image)

# SageMaker writes endpoint ARNs in lower case, so an IAM policy naming "Scones-Endpoint" never matches
# (template.yaml's EndpointName has the same pattern); SageMaker's own pattern, lower case only.
ENDPOINT_NAME_PATTERN = r"[a-z0-9](-*[a-z0-9])*"

# "SageMakerVariantInvocationsPerInstance = (MAX_RPS * SAFETY_FACTOR) * 60", with 0.5 as the suggested start:
# https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-loadtest.html
SAFETY_FACTOR = 0.5
FALLBACK_MAX_RPS = 100.0  # when no load test has been recorded (template.yaml's default target is from it)


def invocations_target(max_rps: float, safety_factor: float = SAFETY_FACTOR) -> int:
    """The target-tracking value: invocations per instance per minute, the unit of the CloudWatch metric."""
    if max_rps <= 0 or not 0 < safety_factor <= 1:
        raise ValueError(f"max requests per second must be > 0 and the safety factor in (0, 1], got "
                         f"{max_rps} and {safety_factor}")
    return max(1, int(max_rps * safety_factor * 60))


def recorded_max_rps(record: Path = LOAD_TEST_RECORD) -> float:
    """One instance's throughput as the local load test measured it (`python -m scones_workflow load`: concurrent
    clients, one ONNX Runtime session per core), else FALLBACK_MAX_RPS. A 2-core machine is close to the default
    ml.m5.xlarge (4 vCPU = 2 cores); measure on your instance type and pass --max-rps when it differs."""
    try:
        return float(json.loads(record.read_text())["summary"][LOAD_TEST_KEY])
    except (OSError, KeyError, ValueError, TypeError):
        return FALLBACK_MAX_RPS


@dataclass(frozen=True)
class ScalingConfig:
    """Target tracking on SageMakerVariantInvocationsPerInstance for every production variant (template.yaml)."""
    enabled: bool = True
    min_instances: int = 1
    max_instances: int = 4
    max_rps: float | None = None       # one instance's requests per second; None: the recorded load test
    scale_in_cooldown: int = 300
    scale_out_cooldown: int = 60

    @property
    def target(self) -> int:
        return invocations_target(self.max_rps if self.max_rps is not None else recorded_max_rps())

    def __post_init__(self) -> None:
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError(f"scaling needs 1 <= --min-instances <= --max-instances, got {self.min_instances} "
                             f"and {self.max_instances}")


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
    training_instance_type: str = DEFAULT_TRAINING_INSTANCE
    instance_type: str = DEFAULT_ENDPOINT_INSTANCE  # the endpoint's
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    serverless_memory_mb: int = 0     # > 0: a serverless variant instead of instances (no capture, no scaling)
    alarm_email: str = ""
    work_dir: Path | None = None      # where model.tar.gz and lambdas.zip are built (default: a temporary folder)

    def __post_init__(self) -> None:
        if not re.fullmatch(ENDPOINT_NAME_PATTERN, self.endpoint_name):
            raise ValueError(f"endpoint name {self.endpoint_name!r}: use lower-case letters, digits and hyphens "
                             f"(SageMaker lower-cases endpoint ARNs, so IAM policies built from capitals never "
                             f"match and every InvokeEndpoint is denied)")
        if self.serverless_memory_mb and self.variants:
            raise ValueError("a serverless endpoint has one production variant: drop --variants or --serverless")
        if self.serverless_memory_mb and self.serverless_memory_mb not in SERVERLESS_MEMORY_MB:
            raise ValueError(f"serverless memory {self.serverless_memory_mb} MB: one of {SERVERLESS_MEMORY_MB}")

    @property
    def serverless(self) -> bool:
        return self.serverless_memory_mb > 0

    @property
    def scaled(self) -> bool:
        """Application Auto Scaling applies: instance variants only (serverless scales by itself)."""
        return self.scaling.enabled and not self.serverless


# ServerlessConfig.MemorySizeInMB's allowed values (API reference, ProductionVariantServerlessConfig).
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 20
