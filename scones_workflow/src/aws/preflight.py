"""Checks before deploy uploads or creates anything, for what AWS refuses later (or moto never does): the
bucket's region, the container image's manifest type, the account's instance quotas."""
from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError


def bucket_region(s3: Any, bucket: str) -> str:
    """The bucket's region. GetBucketLocation answers None for us-east-1 and the legacy "EU" for eu-west-1
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketLocation.html)."""
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def check_bucket_region(s3: Any, bucket: str, region: str) -> None:
    """CloudFormation reads the Lambda zip (AWS::Lambda::Function Code.S3Bucket: "must be in the same AWS Region")
    and SageMaker the model artefacts from `bucket`; refuse a bucket in another region before anything is sent."""
    where = bucket_region(s3, bucket)
    if where != region:
        raise ValueError(f"--bucket {bucket} is in {where} but the deploy region is {region}: the Lambda code "
                         f"and the model artefacts must be in the region of the functions and the endpoint; "
                         f"deploy with --region {where}, or use a bucket in {region}")


# ECR's manifest types (https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-manifest-formats.html,
# BatchGetImage acceptedMediaTypes). A single-image manifest is what SageMaker pulls; `docker buildx` by default
# also pushes a provenance attestation, which makes the tag an OCI image index, and CreateModel/CreateEndpoint
# answer "Unsupported manifest media type". `docker build --provenance=false` pushes a plain manifest.
IMAGE_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
INDEX_MANIFESTS = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
ECR_URI = re.compile(r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
                     r"(?P<repository>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def parse_image_uri(image_uri: str) -> dict[str, str]:
    match = ECR_URI.match(image_uri)
    if not match:
        raise ValueError(f"--container {image_uri}: expected an ECR image URI, "
                         f"<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (or @sha256:<digest>)")
    return {k: v for k, v in match.groupdict().items() if v}


def check_image_manifest(ecr: Any, image_uri: str, region: str) -> str:
    """The pushed image's manifest media type (ECR BatchGetImage); ValueError if SageMaker cannot serve it:
    an image index or manifest list, an image in another region, or no such image."""
    parts = parse_image_uri(image_uri)
    if parts["region"] != region:
        raise ValueError(f"--container {image_uri} is in {parts['region']}, the endpoint in {region}: push the "
                         f"image to a repository in {region}")
    image_id = {"imageDigest": parts["digest"]} if "digest" in parts else {"imageTag": parts.get("tag", "latest")}
    response = ecr.batch_get_image(registryId=parts["account"], repositoryName=parts["repository"],
                                   imageIds=[image_id], acceptedMediaTypes=[*IMAGE_MANIFESTS, *INDEX_MANIFESTS])
    if not response.get("images"):
        failure = (response.get("failures") or [{}])[0]
        raise ValueError(f"--container {image_uri}: ECR has no such image ({failure.get('failureCode', '?')}: "
                         f"{failure.get('failureReason', 'not found')}); push it first (README)")
    media_type = response["images"][0].get("imageManifestMediaType", "")
    if media_type in INDEX_MANIFESTS:
        raise ValueError(f"--container {image_uri} is an image index ({media_type}), which SageMaker rejects with "
                         f"'Unsupported manifest media type': rebuild with `docker build --provenance=false ...` "
                         f"and push again (README, Bring your own container)")
    return media_type


def check_quota(quotas: Any, instance_type: str, usage: str, needed: int) -> float | None:
    """The account's SageMaker quota "<instance type> for <usage>" (usage: "training job usage" or "endpoint
    usage"); ValueError naming the quota to request when it is below `needed`. None when Service Quotas cannot
    be read (no permission): deploy goes on, and SageMaker's own ResourceLimitExceeded says the same later."""
    name = f"{instance_type} for {usage}"
    try:
        for page in quotas.get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker"):
            for quota in page.get("Quotas", []):
                if quota.get("QuotaName") == name:
                    value = float(quota.get("Value", 0))
                    if value < needed:
                        raise ValueError(
                            f"the account's quota '{name}' ({quota.get('QuotaCode')}) is {value:g}, this deploy needs "
                            f"{needed}: request an increase in the Service Quotas console (SageMaker, {name}) or pass "
                            f"another instance type")
                    return value
    except ClientError:
        return None
    return None
