"""template.yaml and workflow.asl.json where moto cannot see: it ignores DefinitionS3Location and
DefinitionSubstitutions, deletion and replacement policies, bucket policies, versioning and alarms.
cfn-lint (E3601 validates the ASL when the definition is inlined) and checkov read the files themselves."""
from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
from cfnlint.api import lint
from cfnlint.decode.cfn_yaml import loads as load_cfn_yaml

from scones_workflow.src.aws import stack
from scones_workflow.src.aws.config import PROJECT_DIR
from scones_workflow.src.lambdas import constants

TEMPLATE = stack.TEMPLATE_PATH
DOCKERFILE = PROJECT_DIR / "Dockerfile"
CHECKOV = Path(__file__).resolve().parents[1] / ".venv" / "tools" / "bin" / "checkov"


@pytest.fixture(scope="module")
def template() -> dict:
    return load_cfn_yaml(TEMPLATE.read_text())


def _plain(node):
    """cfn-lint's decoded nodes as plain dicts/lists/str (json round trip)."""
    return json.loads(json.dumps(node))


def _inlined(template: dict, definition: dict) -> str:
    """The template with the ASL inlined as `Definition` (what CloudFormation builds from the S3 copy)."""
    inlined = copy.deepcopy(_plain(template))
    machine = inlined["Resources"]["StateMachine"]["Properties"]
    del machine["DefinitionS3Location"]
    del inlined["Parameters"]["DefinitionKey"]  # the S3 key has nothing to point at any more
    machine["Definition"] = definition
    return json.dumps(inlined, indent=1)


def _lint(text: str) -> list:
    return list(lint(text))  # the default rules, as `cfn-lint template.yaml` runs them


def test_asl_substitution_names_equal_the_templates_definition_substitutions(template):
    asl_names = set(re.findall(r"\$\{([^}]+)\}", stack.ASL_PATH.read_text()))
    substitutions = set(template["Resources"]["StateMachine"]["Properties"]["DefinitionSubstitutions"])
    assert asl_names == substitutions
    from scones_workflow.src.local.state_machine import FUNCTIONS  # the local backend substitutes the same names

    assert set(FUNCTIONS) == substitutions


def test_template_with_the_definition_inlined_passes_cfn_lint_including_asl_validation(template):
    definition = json.loads(stack.ASL_PATH.read_text())
    assert _lint(_inlined(template, definition)) == []
    # ... and the check is live: E3601 rejects a definition that breaks the States Language schema.
    broken = copy.deepcopy(definition)
    del broken["States"]["ClassifyImage"]["Resource"]
    assert [m.rule.id for m in _lint(_inlined(template, broken))] == ["E3601"]


def test_template_as_deployed_passes_cfn_lint():
    assert _lint(TEMPLATE.read_text()) == []


def test_buckets_survive_stack_deletion_and_replacement_and_keep_versions(template):
    """Defect 8: with Retain, every failed first create left both buckets behind (and deploy's re-create of the
    ROLLBACK_COMPLETE stack made two more). RetainExceptOnCreate keeps them on stack delete and replacement but
    deletes them when the create that made them rolls back (DeletionPolicy attribute, CloudFormation docs)."""
    for name in ("DataBucket", "CaptureBucket"):
        bucket = template["Resources"][name]
        assert bucket["DeletionPolicy"] == "RetainExceptOnCreate" and bucket["UpdateReplacePolicy"] == "Retain"
        tags = {t["Key"]: _plain(t["Value"]) for t in bucket["Properties"]["Tags"]}
        assert tags == {"scones-workflow:stack-name": {"Ref": "AWS::StackName"}}  # how teardown knows them later
        properties = bucket["Properties"]
        assert properties["VersioningConfiguration"]["Status"] == "Enabled"
        assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert all(properties["PublicAccessBlockConfiguration"].values())


def test_the_sagemaker_role_may_write_captures_to_the_capture_prefix(template):
    parameters, resources = template["Parameters"], template["Resources"]
    assert parameters["CapturePrefix"]["Default"] == stack.CAPTURE_PREFIX
    statements = _plain(resources["CaptureBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"])
    grant = next(s for s in statements if s["Effect"] == "Allow")
    assert grant["Principal"] == {"AWS": {"Ref": "SageMakerRoleArn"}} and grant["Action"] == "s3:PutObject"
    assert grant["Resource"] == {"Fn::Sub": "${CaptureBucket.Arn}/${CapturePrefix}/*"}
    assert _plain(template["Outputs"]["CaptureS3Uri"]["Value"]) == {"Fn::Sub": "s3://${CaptureBucket}/${CapturePrefix}"}
    # deploy passes the role and the prefix it writes the DataCaptureConfig with
    source = Path(stack.__file__).read_text()
    assert '"SageMakerRoleArn": config.role_arn' in source and '"CapturePrefix": CAPTURE_PREFIX' in source


def test_defaults_and_metric_names_come_from_the_lambdas_constants(template):
    parameters = template["Parameters"]
    assert parameters["ThresholdConfidence"]["Default"] == str(constants.THRESHOLD)
    assert float(parameters["LowConfidenceRateThreshold"]["Default"]) == constants.LOW_CONFIDENCE_MAX_RATE
    assert int(parameters["AlarmPeriodSeconds"]["Default"]) == 60 * constants.ALARM_WINDOW_MINUTES
    assert int(parameters["AlarmMinInferences"]["Default"]) == constants.ALARM_MIN_INFERENCES
    alarm = _plain(template["Resources"]["LowConfidenceRateAlarm"]["Properties"])
    stats = {m["Id"]: m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert {m["Namespace"] for m in stats.values()} == {constants.METRIC_NAMESPACE}
    assert stats["inferences"]["MetricName"] == constants.METRIC_INFERENCES
    assert stats["low"]["MetricName"] == constants.METRIC_LOW_CONFIDENCE
    for metric in stats.values():
        assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": {"Ref": "EndpointName"}}]
    rate = next(m for m in alarm["Metrics"] if "Expression" in m)
    assert rate["ReturnData"] and "low / inferences" in rate["Expression"]["Fn::Sub"]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # SNS: "CloudWatch alarms ... publish to encrypted topics" only under a customer managed key whose policy
    # grants cloudwatch.amazonaws.com; under the AWS-managed alias/aws/sns the alarm would deploy and stay silent.
    assert "KmsMasterKeyId" not in template["Resources"]["AlarmTopic"].get("Properties", {})
    filter_env = template["Resources"]["ConfidenceFilterFunction"]["Properties"]["Environment"]["Variables"]
    assert _plain(filter_env["ENDPOINT_NAME"]) == {"Ref": "EndpointName"}  # the metric's dimension


# ---------------------------------------------------------------------------- checkov (once per session)
@pytest.fixture(scope="module")
def checkov_reports() -> dict[str, dict]:
    """One checkov run over template.yaml and the Dockerfile: {framework: report}."""
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV} (make venv installs it from requirements-tools.txt)")
    done = subprocess.run([str(CHECKOV), "-f", str(TEMPLATE), "-f", str(DOCKERFILE), "--framework", "cloudformation",
                           "dockerfile", "-o", "json", "--skip-download"], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr[-2000:]
    reports = json.loads(done.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


@pytest.mark.parametrize("framework,path", [("cloudformation", TEMPLATE), ("dockerfile", DOCKERFILE)])
def test_checkov_finds_no_unexplained_failure(checkov_reports, framework, path):
    report = checkov_reports[framework]
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", [])]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] >= 20
    skipped = results.get("skipped_checks", [])
    assert skipped, f"the checkov:skip comments in {path.name} were not read"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"
    comments = re.findall(r"checkov:skip=(CKV2?_[A-Z]+_\d+):", path.read_text())
    assert {c["check_id"] for c in skipped} == set(comments)  # no skip for a check that does not apply


# ---------------------------------------------------------------------------- endpoint auto scaling (issue 25)
def _resolve(node, values: dict):
    """The template's Ref/Sub of parameters, resolved with `values` (what CloudFormation hands the resource)."""
    node = _plain(node)
    if isinstance(node, dict) and "Ref" in node:
        return values.get(node["Ref"], node["Ref"])  # a resource (ScalingTargetId) stays its logical id
    if isinstance(node, dict) and "Fn::Sub" in node:
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(values[m.group(1)]), node["Fn::Sub"])
    if isinstance(node, dict):
        return {k: _resolve(v, values) for k, v in node.items()}
    return node


def test_each_scaled_variant_gets_a_target_tracking_policy_on_invocations_per_instance(template):
    """Application Auto Scaling for SageMaker variants: namespace sagemaker, dimension
    sagemaker:variant:DesiredInstanceCount, resource endpoint/<endpoint>/variant/<variant>, predefined metric
    SageMakerVariantInvocationsPerInstance (endpoint-auto-scaling-add-code-apply.html); each pair only when
    its ScaledVariant parameter names a variant, bounds, target and cooldowns from parameters."""
    resources, conditions = template["Resources"], _plain(template["Conditions"])
    for slot in ("1", "2"):
        target, policy = resources[f"Variant{slot}ScalableTarget"], resources[f"Variant{slot}ScalingPolicy"]
        assert target["Condition"] == policy["Condition"] == f"ScaleVariant{slot}"
        assert conditions[f"ScaleVariant{slot}"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": f"ScaledVariant{slot}"}, ""]}]}
        properties = _plain(target["Properties"])
        assert (properties["ServiceNamespace"], properties["ScalableDimension"]) == (
            "sagemaker", "sagemaker:variant:DesiredInstanceCount")
        assert properties["ResourceId"] == {"Fn::Sub": f"endpoint/${{EndpointName}}/variant/${{ScaledVariant{slot}}}"}
        assert "RoleARN" not in properties  # the service-linked role, created on first use
        tracking = _plain(policy["Properties"])["TargetTrackingScalingPolicyConfiguration"]
        assert tracking["PredefinedMetricSpecification"] == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
        assert {k: v["Ref"] for k, v in tracking.items() if isinstance(v, dict) and "Ref" in v} == {
            "TargetValue": "InvocationsPerInstanceTarget", "ScaleInCooldown": "ScaleInCooldownSeconds",
            "ScaleOutCooldown": "ScaleOutCooldownSeconds"}
    from scones_workflow.src.aws.scaling import SLOTS

    assert set(SLOTS) <= set(template["Parameters"])  # the parameters deploy switches


def test_the_templates_scaling_resources_register_in_moto_application_autoscaling(template):
    """What CloudFormation would send, resolved from the template and sent to moto's Application Auto Scaling
    (which validates the namespace, dimension, resource id and policy shape; moto's CloudFormation does not model
    these resource types)."""
    import boto3
    from moto import mock_aws

    values = {"EndpointName": "scones-endpoint", "ScaledVariant1": "Primary", "ScaledVariant2": "Challenger",
              "MinInstances": 1, "MaxInstances": 4, "InvocationsPerInstanceTarget": 7941, "ScaleInCooldownSeconds": 300,
              "ScaleOutCooldownSeconds": 60, "AWS::StackName": "scones-workflow"}
    with mock_aws():
        scaling = boto3.client("application-autoscaling", region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing")
        for slot in ("1", "2"):
            target = _resolve(template["Resources"][f"Variant{slot}ScalableTarget"]["Properties"], values)
            scaling.register_scalable_target(**{k: int(v) if k.endswith("Capacity") else v for k, v in target.items()})
            policy = _resolve(template["Resources"][f"Variant{slot}ScalingPolicy"]["Properties"], values)
            tracking = policy["TargetTrackingScalingPolicyConfiguration"]
            tracking.update(TargetValue=float(tracking["TargetValue"]), ScaleInCooldown=int(tracking["ScaleInCooldown"]),
                            ScaleOutCooldown=int(tracking["ScaleOutCooldown"]))
            scaling.put_scaling_policy(PolicyName=policy["PolicyName"], PolicyType=policy["PolicyType"],
                                       ServiceNamespace=target["ServiceNamespace"], ResourceId=target["ResourceId"],
                                       ScalableDimension=target["ScalableDimension"],
                                       TargetTrackingScalingPolicyConfiguration=tracking)
        targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert sorted(t["ResourceId"] for t in targets) == ["endpoint/scones-endpoint/variant/Challenger",
                                                        "endpoint/scones-endpoint/variant/Primary"]
    assert {(t["MinCapacity"], t["MaxCapacity"]) for t in targets} == {(1, 4)}
    assert {p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies} == {7941.0}
    assert {p["PolicyName"] for p in policies} == {"scones-workflow-Primary-invocations",
                                                    "scones-workflow-Challenger-invocations"}
