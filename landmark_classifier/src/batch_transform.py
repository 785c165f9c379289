"""Tag an S3 photo library with SageMaker Batch Transform, then join its outputs into the tagger's JSONL.

    python -m landmark_classifier.src.batch_transform s3://bucket/photos/ --output s3://bucket/tags-bt/ \
        --out tags.jsonl --image ACCOUNT.dkr.ecr.REGION.amazonaws.com/landmark-server:1 --role ROLE_ARN
    python -m landmark_classifier.src.batch_transform s3://bucket/photos/ --output s3://bucket/tags-bt/ \
        --out tags.jsonl --join-only          # the outputs of a job that has ended
    python -m landmark_classifier.src.batch_transform s3://bucket/photos/ --output s3://bucket/tags-bt/ \
        --out tags.jsonl --plan --instance-type ml.c5.xlarge --region us-east-1   # the cost; starts nothing

The job (`common.sagemaker_jobs`): a SageMaker model of the serving image (landmark_classifier/Dockerfile,
`src/serve.py`) with the predictor packed as model.tar.gz, and a transform job that sends every object
under the prefix as one request (application/x-image, SplitType None, SingleRecord) and writes each
answer to <output>/<its key relative to the prefix>.out (TransformOutput: "For every S3 object used as
input for the transform job, batch transform stores the transformed data with an .out suffix in a
corresponding subfolder in the location in the output prefix").

The join walks the input prefix again (image suffixes only, as the tagger does), reads each photo's .out
and appends the tagger's line for it (`file` = the photo's s3:// URI, `version` = its ETag) through
tag.py's lock, resume and batched fsync'd appends: the same file, schema and resume keys as
`python -m landmark_classifier.src.tag s3://...`. A bad photo (no image, truncated, empty) does not fail
the job: the container answers it with the tagger's error record (serve.py, under SAGEMAKER_BATCH),
which the join turns into the tagger's error line for that photo (same keys and kind, naming the photo).
A photo without an .out (the job failed or stopped first: Batch Transform uploads only what succeeded)
gets an error line of kind "no transform output" naming the job's FailureReason when there is one.

`--plan` starts nothing and calls only the Price List API (pricing:GetProducts): the cost per million photos
from tag_benchmark's measured photos/s per core (tag_benchmark.TAGGER_RATES), the instance's vCPUs and its
on-demand Batch Transform price per hour, with the date that price took effect (common.aws_pricing).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import aws_pricing
from common import sagemaker_jobs as sj
from landmark_classifier import tag_benchmark
from landmark_classifier.src import predictor, tag
from landmark_classifier.src.serve import MODEL_FILE, REQUEST

OUT_SUFFIX = ".out"
NO_OUTPUT = "no transform output"
BAD_OUTPUT = "bad transform output"


def folder(uri: str) -> str:
    """An S3 prefix as a folder (ending in "/"), so keys relative to it are its objects' paths."""
    sj.split_s3(uri)
    return uri if uri.endswith("/") else uri + "/"


def output_uri(input_uri: str, input_prefix: str, output_prefix: str) -> str:
    """Where Batch Transform writes the answer for the object `input_uri` found under `input_prefix`."""
    input_prefix = folder(input_prefix)
    if not input_uri.startswith(input_prefix):
        raise ValueError(f"{input_uri} is not under the transform's input prefix {input_prefix}")
    return folder(output_prefix) + input_uri[len(input_prefix):] + OUT_SUFFIX


def hours_per_million(photos_per_second_per_core: float, cores: int) -> float:
    """Instance-hours to tag a million photos at a measured per-core rate (the cost on paper is this times
    the instance's hourly price; job start-up is extra)."""
    return 1e6 / (photos_per_second_per_core * cores) / 3600


def plan(instance_type: str, instance_count: int, region: str | None, pricing: Any,
         vcpus: int | None = None, today: str | None = None) -> list[str]:
    """What a job on `instance_count` x `instance_type` would cost per million photos, one line each; calls only
    pricing:GetProducts. Each photo takes one core's ONNX run (serve.py answers one request per core), so the
    measured photos/s per core x the instance's vCPUs is its rate. Without a price, the formula."""
    today = today or time.strftime("%Y-%m-%d", time.gmtime())
    lines = [f"plan, nothing started: Batch Transform on {instance_count} x {instance_type} in {region or '(no region)'}"]
    price, why = None, "no region (--region, or AWS_DEFAULT_REGION)"
    if region:
        try:
            price = aws_pricing.find_hourly_price(pricing, instance_type, region, aws_pricing.TRANSFORM)
        except aws_pricing.PriceUnavailable as err:
            why = str(err)
    if price:
        lines.append(f"price: ${price.usd:.4f} per instance-hour on demand ({price.usage_type}), effective "
                     f"{price.day} in the AWS Price List, read {today}; {aws_pricing.PRICING_PAGE}")
    else:
        lines.append(f"price: not read ({why}); {instance_type}'s Batch Transform price in {region or 'your region'} "
                     f"is on {aws_pricing.PRICING_PAGE}")
    if vcpus is not None:
        lines.append(f"vCPUs: {vcpus} (--vcpus)")
    elif price and price.vcpus:
        vcpus = price.vcpus
        lines.append(f"vCPUs: {vcpus} (the price list's vCpu of {instance_type})")
    else:
        lines.append("vCPUs: unknown (the price list gave none; --vcpus N)")
    for rate in tag_benchmark.TAGGER_RATES:
        measured = (f"{rate.photos}: {rate.per_core:.2f} photos/s per core (tag_benchmark's {rate.row}, "
                    f"{rate.photos_per_s} photos/s on {rate.cores} cores, {tag_benchmark.MEASURED_ON})")
        if vcpus is None:
            lines.append(f"{measured}: instance-hours per million = 1,000,000 / ({rate.per_core:.2f} x vCPUs) / 3600; "
                         f"cost per million = instance-hours x the price per instance-hour")
            continue
        hours = hours_per_million(rate.per_core, vcpus)
        cost = f"${hours * price.usd:.2f} per million photos" if price else \
            f"cost per million = {hours:.2f} x the price per instance-hour"
        lines.append(f"{measured}: {hours:.2f} instance-hours per million ({hours / instance_count:.2f} h on "
                     f"{instance_count} instance{'s' if instance_count > 1 else ''}), {cost}")
    lines.append("not counted: the job's start (instances, image pull), HTTP between SageMaker's agent and the "
                 "container, S3 requests (a GET and a PUT per photo for the job, a GET for the join)")
    return lines


# ----------------------------------------------------------------------------------------- launch

def package_model(onnx_path: Path, out_dir: Path) -> Path:
    """model.tar.gz with the predictor at its root as MODEL_FILE: SageMaker unpacks it into /opt/ml/model,
    where serve.py looks first (`common.sagemaker_jobs.pack_model`: the same file gives the same archive)."""
    predictor.load(onnx_path)  # a landmark predictor, or ModelFileError naming the file
    return sj.pack_model({MODEL_FILE: Path(onnx_path)}, Path(out_dir) / "model.tar.gz")


@dataclass(frozen=True)
class Launch:
    """What a transform job needs beyond its input and output: an existing SageMaker model by name, or the
    serving image, the predictor and the role to make one."""
    model_name: str | None = None
    image_uri: str | None = None
    role_arn: str | None = None
    model: Path = predictor.DEFAULT_MODEL
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 1
    max_payload_mb: int = 20
    work_dir: Path = sj.WORK_DIR

    def __post_init__(self):
        if not self.model_name and not (self.image_uri and self.role_arn):
            raise ValueError("name an existing SageMaker model (--model-name), or give the serving image "
                             "(--image) and the execution role (--role) to create one")


def launch(input_prefix: str, output_prefix: str, how: Launch, session: Any,
           log: Any = print) -> str:
    """Create the model if needed (its model.tar.gz uploaded beside the output) and start the job; its name."""
    name = sj.job_name("landmark-tag")
    model_name = how.model_name
    if not model_name:
        bucket, key = sj.split_s3(folder(output_prefix))
        archive = package_model(Path(how.model), Path(how.work_dir) / name)
        model_key = f"{key}{name}-model/model.tar.gz"  # beside the .out files; the join reads only those
        session.client("s3").upload_file(str(archive), bucket, model_key)
        model_name = name
        sj.create_model(model_name, how.image_uri, f"s3://{bucket}/{model_key}", how.role_arn, session)
        log(f"created model {model_name} ({how.image_uri}, s3://{bucket}/{model_key})")
    spec = sj.TransformJobSpec(name, model_name, folder(input_prefix), folder(output_prefix),
                               instance_type=how.instance_type, instance_count=how.instance_count,
                               max_payload_mb=how.max_payload_mb)
    sj.start_transform(spec, session)
    log(f"started transform job {name} on {how.instance_count} x {how.instance_type}: "
        f"https://console.aws.amazon.com/sagemaker/home?region={session.region_name}#/transform-jobs/{name}")
    return name


# ------------------------------------------------------------------------------------------- join

@dataclass(frozen=True)
class Fetcher:
    """One photo's line from its .out object (runs in the pool's threads, as the tagger's decoder does)."""
    input_prefix: str
    output_prefix: str
    failure: str | None = None  # the job's FailureReason, named in the error lines of photos without output

    def __call__(self, photo: tag.Photo) -> dict[str, Any]:
        bucket, key = sj.split_s3(output_uri(photo.file, self.input_prefix, self.output_prefix))
        try:
            body = photo.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except photo.s3.exceptions.NoSuchKey:
            why = f" (the job: {self.failure})" if self.failure else " (the job ended first or the container refused it)"
            return self._error(photo, f"{photo.file}: no Batch Transform output at s3://{bucket}/{key}{why}", NO_OUTPUT)
        try:
            answer = json.loads(body)
            if "error" in answer:  # the container's error record for a bad photo: the tagger's error line
                return self._error(photo, self._named(answer["error"], photo), answer["kind"])
            return {"file": photo.file, **{k: answer[k] for k in tag.TAG_KEYS}, "version": photo.version}
        except (ValueError, KeyError, TypeError) as err:
            return self._error(photo, f"{photo.file}: s3://{bucket}/{key} is not the served tags ({err!r})", BAD_OUTPUT)

    @staticmethod
    def _named(message: str, photo: tag.Photo) -> str:
        """The container's message about "the request body" as the tagger words it: about the photo's URI."""
        return f"{photo.file}: {message.removeprefix(REQUEST + ': ')}"

    @staticmethod
    def _error(photo: tag.Photo, message: str, kind: str) -> dict[str, Any]:
        return {"file": photo.file, "error": message, "kind": kind, "version": photo.version}


def join(input_prefix: str, output_prefix: str, out: Path, *, failure: str | None = None,
         endpoint_url: str | None = None, workers: int = 16, batch: int = 32) -> tag.Summary:
    """Append a line for every photo under `input_prefix` not yet in `out` from the job's outputs under
    `output_prefix`; the summary of the whole file, as `tag.run` gives it."""
    input_prefix = folder(input_prefix)
    fetch = Fetcher(input_prefix, folder(output_prefix), failure)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = tag.Summary()
    with tag.lock(out):
        tag.drop_partial_line(out)
        done = tag.read_done(out, summary)
        started = time.perf_counter()
        try:
            with open(out, "a", encoding="utf-8") as handle, ThreadPoolExecutor(workers) as pool:
                photos = tag._pending(tag.iter_photos([input_prefix], endpoint_url), done, summary)
                for lines in tag._batches(photos, pool, fetch, batch):
                    records = [future.result() for _, future in lines]
                    tag.append(handle, records)
                    for record in records:
                        summary.add(record)
        finally:
            summary.seconds = time.perf_counter() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.batch_transform",
        description="Tag every photo under an s3:// prefix with a SageMaker Batch Transform job (one photo per "
                    "request to the landmark serving container), wait for it, and join its outputs into --out: "
                    "the same JSON lines as `python -m landmark_classifier.src.tag s3://...`.")
    parser.add_argument("source", help="s3://bucket/prefix/ of the photos")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ for the job's .out files")
    parser.add_argument("--out", required=True, type=Path, help="the JSON Lines file to append to")
    parser.add_argument("--join-only", action="store_true", help="join the outputs of a job that has ended")
    parser.add_argument("--failure-reason", help="with --join-only: the job's FailureReason, for the error lines")
    parser.add_argument("--model-name", help="an existing SageMaker model to run (else one is created)")
    parser.add_argument("--image", help="the serving image's URI in ECR (landmark_classifier/Dockerfile)")
    parser.add_argument("--role", help="the SageMaker execution role's ARN (reads the model and the photos, "
                                       "writes the output prefix)")
    parser.add_argument("--model", type=Path, default=predictor.DEFAULT_MODEL,
                        help="the exported predictor to pack as model.tar.gz (default: the committed one)")
    parser.add_argument("--instance-type", default="ml.c5.xlarge")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--max-payload-mb", type=int, default=20, help="the largest photo sent (MaxPayloadInMB)")
    parser.add_argument("--region", help="default: boto3's")
    parser.add_argument("--poll-seconds", type=float, default=30)
    parser.add_argument("--plan", action="store_true",
                        help="start nothing: print the cost per million photos on --instance-type from the measured "
                             "photos/s per core and the Price List API's dated price (pricing:GetProducts only)")
    parser.add_argument("--vcpus", type=int, help="with --plan: the instance's vCPUs, if the price list gives none")
    args = parser.parse_args(argv)
    if not args.source.startswith("s3://") or not args.output.startswith("s3://"):
        parser.error("the source and --output are s3:// prefixes")
    if args.instance_count < 1 or (args.vcpus is not None and args.vcpus < 1):
        parser.error("--instance-count and --vcpus must be at least 1")
    if args.plan:
        if args.join_only:
            parser.error("--plan starts nothing and joins nothing: leave out --join-only")
        import boto3

        session = boto3.Session(region_name=args.region)
        pricing = session.client("pricing", region_name=aws_pricing.PRICING_REGION)
        print("\n".join(plan(args.instance_type, args.instance_count, session.region_name, pricing, args.vcpus)))
        return 0
    failure = args.failure_reason
    if not args.join_only:
        import boto3

        try:
            how = Launch(args.model_name, args.image, args.role, args.model, args.instance_type,
                         args.instance_count, args.max_payload_mb)
        except ValueError as err:
            parser.error(str(err))
        session = boto3.Session(region_name=args.region)
        name = launch(args.source, args.output, how, session)
        try:
            sj.wait_transform(name, session, poll_seconds=args.poll_seconds)
        except sj.TransformJobFailed as err:  # what succeeded is in S3: join it, the rest get error lines
            print(f"error: {err}", file=sys.stderr)
            failure = str(err)
    try:
        summary = join(args.source, args.output, args.out, failure=failure)
    except (tag.OutputLocked, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.text(), file=sys.stderr)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
