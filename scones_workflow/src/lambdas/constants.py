"""The workflow's constants, defined once (stdlib only: the Lambda zip, the server, the CLI, the monitor,
the tests and template.yaml's defaults all read them from here).

Inside the deployment zip this module is `lambdas.constants`; in the repository it is
`scones_workflow.src.lambdas.constants`.
"""
from __future__ import annotations

# The classifier's classes, in the order of the endpoint's output list `[p_bicycle, p_motorcycle]`
# (the built-in algorithm's label indices in the .lst files).
CLASS_NAMES: tuple[str, ...] = ("bicycle", "motorcycle")

# The seed's confidence threshold: the filter lets an inference through if max(inferences) >= THRESHOLD.
THRESHOLD = 0.94

# SageMaker's name for the only variant of a one-variant endpoint config, and the two-variant split
# (champion keeps 90 % of the traffic, the challenger gets 10 %); local server and AWS use the same names.
DEFAULT_VARIANT = "AllTraffic"
VARIANTS: dict[str, float] = {"Primary": 0.9, "Challenger": 0.1}

# The error the confidence filter raises (Step Functions names a failed task by the exception class).
LOW_CONFIDENCE_ERROR = "THRESHOLD_CONFIDENCE_NOT_MET"

# CloudWatch metrics the filter emits (embedded metric format) and template.yaml's alarm reads.
METRIC_NAMESPACE = "SconesWorkflow"
METRIC_INFERENCES = "Inferences"          # 1 per inference the filter sees
METRIC_LOW_CONFIDENCE = "LowConfidence"   # 1 if below THRESHOLD, else 0
METRIC_CONFIDENCE = "Confidence"          # max(inferences)

# The low-confidence alarm: template.yaml's LowConfidenceRateAlarm (CloudWatch, in AWS) and
# `monitor --check` (locally, on captures) fire when more than LOW_CONFIDENCE_MAX_RATE of the
# inferences in a window of ALARM_WINDOW_MINUTES fall below THRESHOLD, once the window holds at
# least ALARM_MIN_INFERENCES of them.
LOW_CONFIDENCE_MAX_RATE = 0.2
ALARM_WINDOW_MINUTES = 60
ALARM_MIN_INFERENCES = 10
