"""Teardown: the stack (first: its auto-scaling policies and targets go before the endpoint), the endpoint, every
endpoint config and model deploy made for it; the retained buckets reported (or emptied and deleted). Safe to
repeat. `teardown_plan` says all of it without changing anything (`teardown --plan`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from .names import is_ours, missing
from .stack import describe_stack, stack_failures, stack_parameters, stack_status

BUCKET_TAG = "scones-workflow:stack-name"  # template.yaml tags both buckets with the stack's name
CFN_TAG = "aws:cloudformation:stack-name"  # ... and CloudFormation adds its own stack-level tags


def _stack_buckets(cfn: Any, s3: Any, stack_name: str, stack: dict | None) -> list[str]:
    """The stack's buckets. While the stack exists: exactly the AWS::S3::Bucket resources CloudFormation made.
    Once it is gone (the buckets are retained): the buckets of this region (ListBuckets' BucketRegion filter:
    ListBuckets lists the whole account's buckets, https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListBuckets.html)
    with CloudFormation's generated name `<stack>-<logicalid>-<random>` that carry the stack's name tag."""
    if stack is not None:
        resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        return sorted({r["PhysicalResourceId"] for r in resources
                       if r.get("ResourceType") == "AWS::S3::Bucket" and r.get("PhysicalResourceId")})
    prefix = f"{stack_name}-".lower()
    generated = re.compile(re.escape(prefix) + r"(databucket|capturebucket)-[a-z0-9]+")
    pages = s3.get_paginator("list_buckets").paginate(Prefix=prefix, BucketRegion=s3.meta.region_name)
    names = [b["Name"] for page in pages for b in page.get("Buckets", []) if generated.fullmatch(b["Name"])]
    return sorted(name for name in names if _tagged_for(s3, name, stack_name))


def _tagged_for(s3: Any, bucket: str, stack_name: str) -> bool:
    try:
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket).get("TagSet", [])}
    except ClientError as err:
        if err.response["Error"].get("Code") in ("NoSuchTagSet", "NoSuchBucket"):
            return False
        raise
    return stack_name in (tags.get(BUCKET_TAG), tags.get(CFN_TAG))


@dataclass
class Targets:
    """What teardown finds (read-only calls only)."""
    endpoint: dict | None
    configs: list[str]
    models: list[str]
    stack: dict | None
    buckets: list[str]

    @property
    def code_bucket(self) -> str | None:
        return stack_parameters(self.stack).get("CodeBucket") if self.stack else None

    @property
    def scaled(self) -> list[str]:
        parameters = stack_parameters(self.stack) if self.stack else {}
        return [v for v in (parameters.get("ScaledVariant1"), parameters.get("ScaledVariant2")) if v]


def find_targets(sm: Any, cfn: Any, s3: Any, *, endpoint_name: str, stack_name: str) -> Targets:
    from .endpoint import describe_endpoint

    stack = describe_stack(cfn, stack_name)
    configs = [c["EndpointConfigName"] for c in _list(sm.list_endpoint_configs, "EndpointConfigs", endpoint_name)]
    models = [m["ModelName"] for m in _list(sm.list_models, "Models", endpoint_name)]
    return Targets(describe_endpoint(sm, endpoint_name), [c for c in configs if is_ours(c, endpoint_name)],
                   [m for m in models if is_ours(m, endpoint_name)], stack, _stack_buckets(cfn, s3, stack_name, stack))


def teardown_plan(sm: Any, cfn: Any, s3: Any, *, endpoint_name: str, stack_name: str,
                  delete_data: bool = False) -> list[str]:
    """What `teardown` would delete and keep, one line each, without changing anything."""
    found = find_targets(sm, cfn, s3, endpoint_name=endpoint_name, stack_name=stack_name)
    lines = []
    if found.stack is not None:
        scaling = f"; auto scaling of {', '.join(found.scaled)} (policies, targets)" if found.scaled else ""
        lines.append(f"delete stack {stack_name} ({found.stack['StackStatus']}): 3 functions and their roles, the state "
                     f"machine, the alarm and its topic{scaling}")
    if found.endpoint is not None:
        lines.append(f"delete endpoint {endpoint_name} ({found.endpoint['EndpointStatus']}, config "
                     f"{found.endpoint['EndpointConfigName']})")
    lines += [f"delete endpoint config {name}" for name in found.configs]
    lines += [f"delete model {name}" for name in found.models]
    for bucket in found.buckets:
        count = _count_objects(s3, bucket)
        lines.append(f"{'delete' if delete_data else 'keep'} bucket s3://{bucket} ({count} object versions)"
                     + ("" if delete_data else ": DeletionPolicy Retain; --delete-data deletes it"))
    if found.code_bucket:
        lines.append(f"keep s3://{found.code_bucket}/{stack_name}/ and s3://{found.code_bucket}/scones/: your own "
                     f"bucket (deploy --bucket)")
    return lines or ["nothing to delete"]


def _count_objects(s3: Any, bucket: str) -> int:
    """Object versions and delete markers: what stops CloudFormation (and delete_bucket) from deleting it."""
    paginator = s3.get_paginator("list_object_versions")
    return sum(len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
               for page in paginator.paginate(Bucket=bucket))


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker (a versioned bucket is only empty then); returns the count."""
    deleted = 0
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            response = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise RuntimeError(f"s3://{bucket}: could not delete {len(response['Errors'])} object(s), e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
            deleted += len(keys[start:start + 1000])
    return deleted


@dataclass
class TeardownReport:
    deleted: list[str] = field(default_factory=list)   # what this run deleted
    kept: dict[str, str] = field(default_factory=dict)  # what is left, and why
    failed: dict[str, str] = field(default_factory=dict)  # what could not be deleted, and why

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        return {"deleted": self.deleted, "kept": self.kept, "failed": self.failed}

    def lines(self) -> list[str]:
        out = [f"deleted {item}" for item in self.deleted] or ["nothing to delete"]
        out += [f"kept {item}: {why}" for item, why in self.kept.items()]
        out += [f"FAILED {item}: {why}" for item, why in self.failed.items()]
        return out


def teardown(sm: Any, cfn: Any, s3: Any, *, endpoint_name: str, stack_name: str,
             delete_data: bool = False) -> TeardownReport:
    """Delete the stack (with it the auto-scaling policies and targets, before the endpoint they scale), the
    endpoint, every endpoint config and model deploy made for it. The buckets are retained and reported with
    their object counts, unless `delete_data`: then every object version is deleted and the buckets with them.
    Running it again is a no-op."""
    report = TeardownReport()
    found = find_targets(sm, cfn, s3, endpoint_name=endpoint_name, stack_name=stack_name)
    if found.stack is not None:
        _delete_stack(cfn, stack_name, found, report)
    if _delete(sm.delete_endpoint, EndpointName=endpoint_name):
        report.deleted.append(f"endpoint {endpoint_name}")
        try:
            sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint_name)
        except WaiterError as err:
            report.failed[f"endpoint {endpoint_name}"] = f"still not deleted: {err}"
    for name in found.configs:
        if _delete(sm.delete_endpoint_config, EndpointConfigName=name):
            report.deleted.append(f"endpoint config {name}")
    for name in found.models:
        if _delete(sm.delete_model, ModelName=name):
            report.deleted.append(f"model {name}")
    for bucket in found.buckets:
        try:
            if delete_data:
                count = empty_bucket(s3, bucket)
                s3.delete_bucket(Bucket=bucket)
                report.deleted.append(f"bucket s3://{bucket} ({count} object versions)")
            else:
                count = _count_objects(s3, bucket)
                report.kept[f"bucket s3://{bucket}"] = (
                    f"{count} object versions (images, captures) kept by DeletionPolicy Retain; "
                    f"`teardown --delete-data` empties and deletes it")
        except ClientError as err:
            if not missing(err):
                report.failed[f"bucket s3://{bucket}"] = f"{err.response['Error'].get('Code')}: {err}"
    return report


def _delete_stack(cfn: Any, stack_name: str, found: Targets, report: TeardownReport) -> None:
    if found.code_bucket:  # the --bucket of deploy: not the stack's, so never deleted here
        report.kept[f"s3://{found.code_bucket}/{stack_name}/ and s3://{found.code_bucket}/scones/"] = (
            "deployment code, training data and model artefacts in your own bucket (deploy --bucket); "
            "delete them yourself if you no longer need them")
    cfn.delete_stack(StackName=stack_name)
    try:
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack_name, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
        report.deleted.append(f"stack {stack_name}")
    except WaiterError:
        status = stack_status(cfn, stack_name)
        reasons = stack_failures(cfn, stack_name)
        report.failed[f"stack {stack_name}"] = (f"{status}: {'; '.join(reasons) or 'no reason reported'}; "
                                               f"fix that and run teardown again")


def _list(call: Any, key: str, name_contains: str) -> list[dict]:
    items, token = [], None
    while True:
        page = call(NameContains=name_contains, MaxResults=100, **({"NextToken": token} if token else {}))
        items += page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return items


def _delete(call: Any, **kwargs: Any) -> bool:
    """Run a delete call; True if it deleted something, False if there was nothing to delete."""
    try:
        call(**kwargs)
        return True
    except ClientError as err:
        if missing(err):
            return False
        raise
