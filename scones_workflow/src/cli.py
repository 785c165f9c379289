"""python -m scones_workflow {stage,train,serve,run,monitor,retrain,load,deploy,teardown}

The local workflow, step by step (each step also runs inside the notebook):

    python -m scones_workflow stage                      # DATA_DIR/scones, CIFAR-100, or the stand-in
    python -m scones_workflow train --profile full       # fine-tune Lite0, export artifacts/full/model.onnx
    python -m scones_workflow serve --port 8080          # the committed ONNX model, SageMaker container contract
    python -m scones_workflow run -n 20                  # executions of the state machine (moto)
    python -m scones_workflow monitor CAPTURES           # plots, drift, variant comparison
    python -m scones_workflow monitor CAPTURES --check   # low-confidence alarm: exit 1 above the limit
    python -m scones_workflow retrain --captures CAPTURES  # pseudo-labels + labelling queue, promotion gate
    python -m scones_workflow load                       # 200 executions, 8 clients, endpoint throughput

and on AWS (credentials from the usual boto3 chain; costs money):

    python -m scones_workflow deploy --role-arn ... --bucket ... --plan  # what it would make and cost, nothing made
    python -m scones_workflow deploy --role-arn ... --bucket ...   # again: a new model, blue/green
    python -m scones_workflow deploy ... --container IMAGE_URI     # the ONNX model in this repo's container
    python -m scones_workflow teardown [--delete-data] [--plan]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from common import paths
from common.profiles import NAMES

# The low-confidence alarm's defaults are template.yaml's CloudWatch alarm: more than 20 % of an hour's
# inferences below THRESHOLD, once the hour has at least 10 inferences.
from .lambdas.constants import ALARM_MIN_INFERENCES, ALARM_WINDOW_MINUTES, LOW_CONFIDENCE_MAX_RATE, THRESHOLD

PROJECT_DIR = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT_DIR / "artifacts"


def default_model() -> Path:
    """$SCONES_MODEL, else /opt/ml/model/model.onnx in the container, else the committed run-of-record model."""
    from .serving.predictor import default_model as resolve

    return resolve()


def cmd_stage(args: argparse.Namespace) -> int:
    from . import data

    staged = data.stage(paths.data_dir(args.data_dir))
    print(f"{'STAND-IN: ' if staged.stand_in else ''}{staged.source}: {len(staged.train)} train, "
          f"{len(staged.test)} test images in {paths.display(staged.root)}")
    if args.s3_uri:
        uploaded = data.upload(staged, args.s3_uri, endpoint_url=args.endpoint_url)
        print(f"uploaded {len(uploaded)} files to {args.s3_uri}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from common.serving import save_torchscript

    from . import data
    from .config import config_for
    from .training import model

    staged = data.stage(paths.data_dir(args.data_dir))
    images, labels = data.load_arrays(staged, "train")
    config = config_for(args.profile).train
    result = model.train(images, labels, config, cache_dir=ARTIFACTS / "cache")
    test_images, test_labels = data.load_arrays(staged, "test")
    accuracy = float((model.predict_proba(result.model, test_images).argmax(1) == test_labels).mean())
    out = Path(args.model or ARTIFACTS / args.profile / "model.onnx")
    model.export(result.model, out, config, {"profile": args.profile, "dataset": staged.source,
                                             "val_accuracy": round(result.val_accuracy, 4),
                                             "test_accuracy": round(accuracy, 4)})
    save_torchscript(result.model, out.with_suffix(".ts"), model.to_tensor(test_images[:2]))
    print(f"best epoch {result.best_epoch}: validation accuracy {result.val_accuracy:.4f}; "
          f"test accuracy {accuracy:.4f}; saved {out} (and {out.with_suffix('.ts').name}, TorchScript)")
    return 0


def parse_variants(specs: list[str]) -> dict[str, tuple[Path, float]]:
    """`NAME=FILE.onnx:WEIGHT` -> {NAME: (FILE, WEIGHT)}; errors name the bad spec."""
    variants = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        path, _, weight = rest.rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name or not path or value < 0:
            raise SystemExit(f"--variant {spec!r}: expected NAME=FILE.onnx:WEIGHT, e.g. Primary=model.onnx:0.9")
        variants[name] = (Path(path), value)
    return variants


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.capture import CaptureWriter
    from .serving.predictor import Predictor
    from .serving.server import InferenceServer, Variant, port_from_env

    capture = CaptureWriter(args.capture, args.endpoint_name, endpoint_url=args.endpoint_url) if args.capture else None
    if args.variant:
        variants = {name: Variant(Predictor(path), weight) for name, (path, weight) in parse_variants(args.variant).items()}
        server = InferenceServer(variants=variants, host=args.host, port=args.port or port_from_env(), capture=capture)
        served = ", ".join(f"{n} ({v.weight:g})" for n, v in variants.items())
    else:
        predictor = Predictor(args.model or default_model())
        server = InferenceServer(predictor, host=args.host, port=args.port or port_from_env(), capture=capture)
        served = f"{predictor.path} ({predictor.metadata.get('model_name', 'model')})"
    print(f"serving {served} on {server.url} (captures: {args.capture or 'off'})", flush=True)
    try:
        server.serve_until_stopped()  # SIGTERM (docker stop, SageMaker) must flush the captures like Ctrl-C does
    finally:
        if capture is not None:
            capture.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .local.state_machine import LocalWorkflow
    from .serving.capture import CaptureWriter
    from .serving.loadtest import load_test_images
    from .serving.predictor import Predictor
    from .serving.server import InferenceServer

    images = load_test_images(paths.data_dir(args.data_dir), args.n)
    capture = CaptureWriter(args.capture, "scones-endpoint") if args.capture else None
    with InferenceServer(Predictor(args.model or default_model()), port=0, capture=capture) as server, \
            LocalWorkflow(server.url, threshold=args.threshold) as workflow:
        keys = [workflow.put_image(name, content) for name, content in images.items()]
        results = workflow.run_many(keys, concurrency=args.concurrency)
    print(results.drop(columns="execution_arn").to_string(index=False))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from common import plotting

    from .monitoring import monitor

    captures = monitor.read_captures(args.location, endpoint_url=args.endpoint_url)
    if args.check:
        check = monitor.check_low_confidence(captures, threshold=args.threshold, max_rate=args.max_rate,
                                             window_minutes=args.window_minutes, min_inferences=args.min_inferences)
        if check.inferences == 0:
            print(f"NO DATA: no capture records under {args.location} in the window", file=sys.stderr)
            return 2
        print(check.message(), file=sys.stderr if check.in_alarm else sys.stdout)
        return 1 if check.in_alarm else 0
    if captures.empty:
        print(f"no capture records under {args.location}", file=sys.stderr)
        return 1
    out = Path(args.out)
    plotting.confidence_over_time(captures["inference_time"], captures["confidence"], threshold=args.threshold,
                                  labels=captures["predicted_label"], save_to=out / "confidence_over_time.png")
    plotting.confidence_histogram(captures["confidence"], threshold=args.threshold,
                                  save_to=out / "confidence_histogram.png")
    drift, p_value = monitor.class_share_drift(captures)
    print(f"{len(captures)} inferences; {int((captures['confidence'] < args.threshold).sum())} below {args.threshold}")
    print(drift.to_string(index=False))
    print(f"class-share drift p-value {p_value:.4f}; figures in {out}")
    if captures["variant"].nunique() > 1:
        table, verdict = monitor.compare_variants(captures, args.threshold)
        print(table.to_string(index=False))
        print(verdict)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .serving import loadtest
    from .serving.predictor import Predictor

    images = loadtest.load_test_images(paths.data_dir(args.data_dir))
    summary = loadtest.run_load(Predictor(args.model or default_model()), images, executions=args.executions,
                                concurrency=args.concurrency, endpoint_requests=args.endpoint_requests,
                                capture_dir=Path(args.capture_dir) if args.capture_dir else None)
    print(json.dumps(summary, indent=2))
    return 0 if summary["checks_passed"] else 1


def cmd_retrain(args: argparse.Namespace) -> int:
    from . import data
    from .config import config_for
    from .training import retrain

    staged = data.stage(paths.data_dir(args.data_dir))
    train_images, train_labels = data.load_arrays(staged, "train")
    test_images, test_labels = data.load_arrays(staged, "test")
    images = retrain.LabelledImages(train_images, train_labels, test_images, test_labels)
    files = retrain.RoundFiles(production_model=Path(args.model or default_model()), queue_path=Path(args.queue),
                               out_dir=Path(args.out), cache_dir=ARTIFACTS / "cache")
    result = retrain.retrain(args.captures, images, files, config_for(args.profile).train, threshold=args.threshold,
                             endpoint_url=args.endpoint_url,
                             training_run={"profile": args.profile, "dataset": staged.source})
    print(result.summary())
    if result.queued:
        print(f"{result.queued} image(s) wait for a label in {result.queue_path}: fill the 'label' column with "
              f"{' or '.join(data.CLASSES)} and run retrain again to use them")
    return 0


def _aws_errors(run: Callable[[], int]) -> int:
    """What a user can fix (no credentials or region, a refused request, a bad option) as one line, exit 2."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, WaiterError

    try:
        return run()
    except NoCredentialsError:
        print("error: no AWS credentials: configure them (aws configure, AWS_PROFILE, or an instance role)",
              file=sys.stderr)
    except NoRegionError:
        print("error: no AWS region: pass --region or set AWS_DEFAULT_REGION", file=sys.stderr)
    except ClientError as err:
        error = err.response.get("Error", {})
        print(f"error: AWS refused {err.operation_name}: {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
    except WaiterError as err:  # a wait that the code did not turn into a named failure itself
        print(f"error: {err}", file=sys.stderr)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
    return 2


def deploy_config(args: argparse.Namespace) -> object:
    """The DeployConfig of `deploy`'s options."""
    from .aws.config import DEFAULT_MODEL, DeployConfig, ScalingConfig

    scaling = ScalingConfig(enabled=not args.no_autoscaling, min_instances=args.min_instances,
                            max_instances=args.max_instances, max_rps=args.max_rps)
    return DeployConfig(role_arn=args.role_arn, bucket=args.bucket, endpoint_name=args.endpoint_name,
                        stack_name=args.stack_name, threshold=args.threshold, container=args.container,
                        model_path=Path(args.model) if args.model else DEFAULT_MODEL, variants=args.variants,
                        training_mode=args.training_mode, training_instance_type=args.training_instance_type,
                        instance_type=args.endpoint_instance_type, scaling=scaling,
                        serverless_memory_mb=args.serverless or 0, alarm_email=args.alarm_email or "")


def cmd_deploy(args: argparse.Namespace) -> int:
    def run() -> int:
        import boto3

        from .aws.deployment import deploy

        config = deploy_config(args)
        if args.plan:
            from .aws.plan import deploy_plan

            print("\n".join(deploy_plan(boto3.Session(region_name=args.region), config)))
            return 0
        staged = None
        if not config.container:  # the built-in algorithm trains on the staged images
            from . import data

            staged = data.stage(paths.data_dir(args.data_dir))
        deployment = deploy(boto3.Session(region_name=args.region), config, staged)
        print(json.dumps(deployment.summary(), indent=2))
        return 0

    return _aws_errors(run)


def cmd_teardown(args: argparse.Namespace) -> int:
    def run() -> int:
        import boto3

        from .aws.teardown import teardown, teardown_plan

        session = boto3.Session(region_name=args.region)
        clients = session.client("sagemaker"), session.client("cloudformation"), session.client("s3")
        if args.plan:
            print("\n".join(teardown_plan(*clients, endpoint_name=args.endpoint_name, stack_name=args.stack_name,
                                           delete_data=args.delete_data)))
            return 0
        report = teardown(*clients, endpoint_name=args.endpoint_name, stack_name=args.stack_name,
                          delete_data=args.delete_data)
        print("\n".join(report.lines()))
        return 0 if report.ok else 1

    return _aws_errors(run)


def add_deploy_options(p: argparse.ArgumentParser, data_dir: dict) -> None:
    from .aws.config import DEFAULT_ENDPOINT_INSTANCE, DEFAULT_TRAINING_INSTANCE, SERVERLESS_MEMORY_MB

    p.add_argument("--role-arn", required=True,
                   help="SageMaker execution role (training, the endpoint, and data capture writes)")
    p.add_argument("--bucket", required=True, help="your bucket for data, model artefacts and deployment code; "
                                                   "it must be in the deploy region (checked first)")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--threshold", type=float, default=THRESHOLD, help=f"default {THRESHOLD}")
    p.add_argument("--container", metavar="IMAGE_URI",
                   help="serve the ONNX model with this bring-your-own container image (ECR URI; see README; built "
                        "with --provenance=false, checked first) instead of training the built-in classifier")
    p.add_argument("--model", help="ONNX model for --container (default: scones_workflow/models/"
                                   "scones_classifier.onnx)")
    p.add_argument("--variants", action="store_true",
                   help="two weighted variants: the model serving now keeps 90%% (Primary), the new "
                        "one gets 10%% (Challenger); deploy again without it to promote")
    p.add_argument("--training-mode", choices=["pretrained", "scratch"], default="pretrained",
                   help="built-in classifier: ImageNet ResNet-18 at 224 px (default) or from scratch at 32 px")
    p.add_argument("--training-instance-type", default=DEFAULT_TRAINING_INSTANCE,
                   help=f"built-in classifier's training instance, a GPU type (default {DEFAULT_TRAINING_INSTANCE}; "
                        f"the account's quota is checked first)")
    p.add_argument("--endpoint-instance-type", default=DEFAULT_ENDPOINT_INSTANCE,
                   help=f"endpoint instance type (default {DEFAULT_ENDPOINT_INSTANCE}; quota checked first)")
    p.add_argument("--min-instances", type=int, default=1, help="auto scaling: fewest instances per variant (default 1)")
    p.add_argument("--max-instances", type=int, default=4, help="auto scaling: most instances per variant (default 4)")
    p.add_argument("--max-rps", type=float, default=None,
                   help="requests per second one instance sustains; the scaling target is it x 0.5 x 60 per minute "
                        "(default: the load test's recorded endpoint throughput, see README Scaling)")
    p.add_argument("--no-autoscaling", action="store_true", help="a fixed fleet of --min-instances per variant")
    p.add_argument("--serverless", type=int, metavar="MEMORY_MB", choices=SERVERLESS_MEMORY_MB,
                   help="serverless inference with this memory instead of instances: for spiky, low traffic; "
                        "cold starts after idle, no data capture, one variant")
    p.add_argument("--alarm-email", help="subscribe this address to the low-confidence alarm")
    p.add_argument("--plan", action="store_true",
                   help="print every resource, instance type and hourly price deploy would use; change nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scones_workflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = {"default": None, "help": "datasets folder (default: $DATA_DIR, else ./data)"}
    model_help = ("ONNX model (default: $SCONES_MODEL, else /opt/ml/model/model.onnx in the container, else the "
                  "committed scones_workflow/models/scones_classifier.onnx)")

    p = sub.add_parser("stage", help="stage the images (+ .lst files) and optionally upload them to S3")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--s3-uri", help="also upload the staged folder here (s3://bucket/prefix)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto server)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("train", help="fine-tune EfficientNet-Lite0 on the CPU, export the served ONNX model")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--profile", choices=NAMES, default="full", help="training budget (src/config.py)")
    p.add_argument("--model", help="where to save (default: scones_workflow/artifacts/<profile>/model.onnx; a "
                                   "TorchScript copy .ts goes next to it)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("serve", help="run the SageMaker-contract inference server (GET /ping, POST /invocations)")
    p.add_argument("--model", metavar="FILE.onnx", help=model_help)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FILE.onnx:WEIGHT",
                   help="a production variant (repeat: e.g. Primary=a.onnx:0.9 Challenger=b.onnx:0.1); requests "
                        "are routed by weight unless they name one (TargetVariant); replaces --model")
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0, as in a container)")
    p.add_argument("--port", type=int, default=None, help="default: $SAGEMAKER_BIND_TO_PORT, $PORT, else 8080")
    p.add_argument("--capture", help="capture destination, a folder or s3://bucket/prefix (default: no capture)")
    p.add_argument("--endpoint-name", default="scones-endpoint", help="endpoint name in capture paths")
    p.add_argument("--endpoint-url", help="S3 endpoint for s3:// captures (MinIO, moto server)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="run state-machine executions locally (moto) on test images, print the results")
    p.add_argument("--model", metavar="FILE.onnx", help=model_help)
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("-n", type=int, default=20, help="how many test images (default 20)")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent executions (default 1)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help=f"confidence filter threshold (default {THRESHOLD})")
    p.add_argument("--capture", help="capture destination folder (default: no capture)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("monitor", help="read capture files (folder or s3:// prefix): plots, drift, variants; "
                                       "--check: the low-confidence alarm (exit 1 in alarm)")
    p.add_argument("location", help="capture folder or s3:// prefix (read recursively)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help=f"confidence threshold (default {THRESHOLD})")
    p.add_argument("--out", default="monitor_figures", help="folder for the figures (default ./monitor_figures)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto server)")
    p.add_argument("--check", action="store_true",
                   help="alarm check only: exit 1 (and name the window and rate) when the share of inferences "
                        "below --threshold in the last --window-minutes of captures exceeds --max-rate; "
                        "exit 2 when the window holds no captures")
    p.add_argument("--max-rate", type=float, default=LOW_CONFIDENCE_MAX_RATE,
                   help=f"alarm above this low-confidence rate (default {LOW_CONFIDENCE_MAX_RATE})")
    p.add_argument("--window-minutes", type=float, default=ALARM_WINDOW_MINUTES,
                   help=f"window ending at the latest capture (default {ALARM_WINDOW_MINUTES}, as the CloudWatch alarm)")
    p.add_argument("--min-inferences", type=int, default=ALARM_MIN_INFERENCES,
                   help=f"no alarm on fewer inferences in the window (default {ALARM_MIN_INFERENCES})")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("retrain", help="retrain from captures: pseudo-labels, a labelling queue CSV, promote "
                                       "only if at least as accurate on the test set")
    p.add_argument("--captures", required=True, metavar="LOCATION", help="capture folder or s3:// prefix")
    p.add_argument("--queue", default=str(ARTIFACTS / "labelling" / "queue.csv"),
                   help="labelling queue CSV: low-confidence images are added, filled-in labels are used "
                        "(default scones_workflow/artifacts/labelling/queue.csv)")
    p.add_argument("--model", metavar="FILE.onnx",
                   help="the production model to beat and to replace when promoted (default as for serve)")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--profile", choices=NAMES, default="full", help="training budget (src/config.py)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"confidence for a pseudo-label (default {THRESHOLD}, the filter's)")
    p.add_argument("--out", default=str(ARTIFACTS / "retrain"), help="where the candidate model goes")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto server)")
    p.set_defaults(func=cmd_retrain)

    text = ("load test of the local stack: executions from concurrent clients, every one terminal, one capture "
            "record per endpoint invocation (none lost), where an execution's time goes, endpoint throughput; "
            "exit 1 when a check fails")
    p = sub.add_parser("load", help=text, description=text)
    p.add_argument("--model", metavar="FILE.onnx", help=model_help)
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--executions", type=int, default=200, help="workflow executions (default 200)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--endpoint-requests", type=int, default=200,
                   help="direct invoke_endpoint calls for the endpoint throughput (default 200)")
    p.add_argument("--capture-dir", default=None, help="where captures go (default: a new temp folder)")
    p.set_defaults(func=cmd_load)

    for name, text in [("deploy", "AWS: new model (built-in classifier training job, or --container), the stack "
                                  "(create/update), endpoint with 100%% data capture (create, or update_endpoint)"),
                       ("teardown", "AWS: delete endpoint, its configs and models, and the stack; report the "
                                    "retained buckets (or --delete-data); safe to repeat")]:
        p = sub.add_parser(name, help=text, description=text.replace("%%", "%"))
        p.add_argument("--region", default=None, help="AWS region (default: boto3's)")
        p.add_argument("--endpoint-name", default="scones-endpoint", help="default scones-endpoint")
        p.add_argument("--stack-name", default="scones-workflow", help="default scones-workflow")
        if name == "deploy":
            add_deploy_options(p, data_dir)
        else:
            p.add_argument("--delete-data", action="store_true",
                           help="also empty (every object version) and delete the retained data and capture buckets")
            p.add_argument("--plan", action="store_true", help="print what teardown would delete and keep; change nothing")
        p.set_defaults(func=cmd_deploy if name == "deploy" else cmd_teardown)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("moto").setLevel(logging.CRITICAL)  # logs every failed state; results show the errors
    args = build_parser().parse_args(argv)
    return args.func(args)
