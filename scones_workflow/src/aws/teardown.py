"""Teardown: the endpoint, every endpoint config and model deploy made for it, and the stack; the retained
buckets reported (or emptied and deleted). Safe to repeat."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from .names import is_ours, missing
from .stack import describe_stack, stack_failures, stack_status


def _stack_buckets(cfn: Any, s3: Any, stack_name: str) -> list[str]:
    """The stack's buckets: from its resources while it exists, else by CloudFormation's generated names
    (`<stack>-<logicalid>-<random>`, lower case), which outlive the stack since both buckets are retained."""
    names: set[str] = set()
    try:
        resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        names |= {r["PhysicalResourceId"] for r in resources
                  if r.get("ResourceType") == "AWS::S3::Bucket" and r.get("PhysicalResourceId")}
    except ClientError as err:
        if not missing(err):
            raise
    prefixes = tuple(f"{stack_name}-{logical}-".lower() for logical in ("DataBucket", "CaptureBucket"))
    names |= {b["Name"] for b in s3.list_buckets().get("Buckets", []) if b["Name"].startswith(prefixes)}
    return sorted(names)


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
    """Delete the endpoint, every endpoint config and model deploy made for it, and the stack. The buckets
    are retained (DeletionPolicy: Retain) and reported with their object counts, unless `delete_data`:
    then every object version is deleted and the buckets with them. Running it again is a no-op."""
    report = TeardownReport()
    if _delete(sm.delete_endpoint, EndpointName=endpoint_name):
        report.deleted.append(f"endpoint {endpoint_name}")
        try:
            sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint_name)
        except WaiterError as err:
            report.failed[f"endpoint {endpoint_name}"] = f"still not deleted: {err}"
    configs = [c["EndpointConfigName"] for c in _list(sm.list_endpoint_configs, "EndpointConfigs", endpoint_name)]
    for name in configs:
        if is_ours(name, endpoint_name) and _delete(sm.delete_endpoint_config, EndpointConfigName=name):
            report.deleted.append(f"endpoint config {name}")
    for name in [m["ModelName"] for m in _list(sm.list_models, "Models", endpoint_name)]:
        if is_ours(name, endpoint_name) and _delete(sm.delete_model, ModelName=name):
            report.deleted.append(f"model {name}")

    buckets = _stack_buckets(cfn, s3, stack_name)
    stack = describe_stack(cfn, stack_name)
    if stack is not None:
        code_bucket = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}.get("CodeBucket")
        if code_bucket:  # the --bucket of deploy: not the stack's, so never deleted here
            report.kept[f"s3://{code_bucket}/{stack_name}/ and s3://{code_bucket}/scones/"] = (
                "deployment code, training data and model artefacts in your own bucket (deploy --bucket); "
                "delete them yourself if you no longer need them")
        cfn.delete_stack(StackName=stack_name)
        try:
            cfn.get_waiter("stack_delete_complete").wait(StackName=stack_name,
                                                         WaiterConfig={"Delay": 10, "MaxAttempts": 180})
            report.deleted.append(f"stack {stack_name}")
        except WaiterError:
            status = stack_status(cfn, stack_name)
            reasons = stack_failures(cfn, stack_name)
            report.failed[f"stack {stack_name}"] = (f"{status}: {'; '.join(reasons) or 'no reason reported'}; "
                                                   f"fix that and run teardown again")
    for bucket in buckets:
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
