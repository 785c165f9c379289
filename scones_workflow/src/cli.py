"""python -m scones_workflow {stage,train,serve,run,monitor,load,deploy,teardown}

The local workflow, step by step (each step also runs inside the notebook):

    python -m scones_workflow stage                      # DATA_DIR/scones, CIFAR-100, or the stand-in
    python -m scones_workflow train --profile full       # fine-tune Lite0, save artifacts/full/model.pt
    python -m scones_workflow serve --port 8080          # the SageMaker-contract server, with capture
    python -m scones_workflow run -n 20                  # executions of the state machine (moto)
    python -m scones_workflow monitor artifacts/captures # read captures, write plots
    python -m scones_workflow load                       # 200 executions, 8 clients

and on AWS (credentials from the usual boto3 chain; costs money):

    python -m scones_workflow deploy --role-arn ... --bucket ...   # again: a new model, blue/green
    python -m scones_workflow deploy ... --container IMAGE_URI     # the ONNX model in this repo's container
    python -m scones_workflow teardown [--delete-data]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from common import paths

from .lambdas.constants import THRESHOLD

PROJECT_DIR = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT_DIR / "artifacts"


def default_model(profile: str = "full") -> Path:
    """$SCONES_MODEL (set in the container), else the model `train` writes for `profile`."""
    return Path(os.environ.get("SCONES_MODEL") or ARTIFACTS / profile / "model.pt")


def cmd_stage(args: argparse.Namespace) -> int:
    from . import data

    staged = data.stage(paths.data_dir(args.data_dir))
    print(f"{'STAND-IN: ' if staged.stand_in else ''}{staged.source}: {len(staged.train)} train, "
          f"{len(staged.test)} test images in {staged.root}")
    if args.s3_uri:
        uploaded = data.upload(staged, args.s3_uri, endpoint_url=args.endpoint_url)
        print(f"uploaded {len(uploaded)} files to {args.s3_uri}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import data, model

    staged = data.stage(paths.data_dir(args.data_dir))
    images, labels = data.load_arrays(staged, "train")
    config = model.PROFILES[args.profile]
    result = model.train(images, labels, config, cache_dir=ARTIFACTS / "cache")
    test_images, test_labels = data.load_arrays(staged, "test")
    accuracy = float((model.predict_proba(result.model, test_images).argmax(1) == test_labels).mean())
    out = model.save(result.model, Path(args.model or ARTIFACTS / args.profile / "model.pt"), config)
    print(f"best epoch {result.best_epoch}: validation accuracy {result.val_accuracy:.4f}; "
          f"test accuracy {accuracy:.4f}; saved {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .capture import CaptureWriter
    from .model import Predictor
    from .server import InferenceServer, port_from_env

    capture = CaptureWriter(args.capture, args.endpoint_name, endpoint_url=args.endpoint_url) if args.capture else None
    server = InferenceServer(Predictor(args.model or default_model()), host=args.host,
                             port=args.port or port_from_env(), capture=capture)
    # SIGTERM (docker stop, SageMaker) must flush the captures like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving on {server.url} (captures: {args.capture or 'off'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if capture is not None:
            capture.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .capture import CaptureWriter
    from .load import test_images
    from .model import Predictor
    from .server import InferenceServer
    from .workflow import LocalWorkflow

    images = test_images(paths.data_dir(args.data_dir), args.n)
    capture = CaptureWriter(args.capture, "scones-endpoint") if args.capture else None
    with InferenceServer(Predictor(args.model or default_model()), port=0, capture=capture) as server, \
            LocalWorkflow(server.url, threshold=args.threshold) as workflow:
        keys = [workflow.put_image(name, content) for name, content in images.items()]
        results = workflow.run_many(keys, concurrency=args.concurrency)
    print(results.drop(columns="execution_arn").to_string(index=False))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from common import plotting

    from . import monitor

    captures = monitor.read_captures(args.location, endpoint_url=args.endpoint_url)
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
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from . import load

    forwarded = ["--model", str(args.model or default_model()), "--executions", str(args.executions),
                 "--concurrency", str(args.concurrency)]
    if args.data_dir:
        forwarded += ["--data-dir", args.data_dir]
    return load.main(forwarded)


def cmd_deploy(args: argparse.Namespace) -> int:
    from . import aws

    return aws.deploy_from_args(args)


def cmd_teardown(args: argparse.Namespace) -> int:
    from . import aws

    return aws.teardown_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scones_workflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = {"default": None, "help": "datasets folder (default: $DATA_DIR, else ./data)"}
    model_help = "TorchScript model from `train` (default: $SCONES_MODEL, else scones_workflow/artifacts/full/model.pt)"

    p = sub.add_parser("stage", help="stage the images (+ .lst files) and optionally upload them to S3")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--s3-uri", help="also upload the staged folder here (s3://bucket/prefix)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto server)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("train", help="fine-tune EfficientNet-Lite0 on the CPU and save the served model")
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--profile", choices=["tiny", "quick", "full"], default="full", help="training budget")
    p.add_argument("--model", help="where to save (default: scones_workflow/artifacts/<profile>/model.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("serve", help="run the SageMaker-contract inference server (GET /ping, POST /invocations)")
    p.add_argument("--model", help=model_help)
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0, as in a container)")
    p.add_argument("--port", type=int, default=None, help="default: $SAGEMAKER_BIND_TO_PORT, $PORT, else 8080")
    p.add_argument("--capture", help="capture destination, a folder or s3://bucket/prefix (default: no capture)")
    p.add_argument("--endpoint-name", default="scones-endpoint", help="endpoint name in capture paths")
    p.add_argument("--endpoint-url", help="S3 endpoint for s3:// captures (MinIO, moto server)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="run state-machine executions locally (moto) on test images, print the results")
    p.add_argument("--model", help=model_help)
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("-n", type=int, default=20, help="how many test images (default 20)")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent executions (default 1)")
    p.add_argument("--threshold", type=float, default=0.94, help="confidence filter threshold (default 0.94)")
    p.add_argument("--capture", help="capture destination folder (default: no capture)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("monitor", help="read capture files (folder or s3:// prefix), plot confidence, check drift")
    p.add_argument("location", help="capture folder or s3:// prefix (read recursively)")
    p.add_argument("--threshold", type=float, default=0.94, help="threshold line in the plots (default 0.94)")
    p.add_argument("--out", default="monitor_figures", help="folder for the figures (default ./monitor_figures)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto server)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("load", help="load test: 200 executions from 8 clients, latency and capture checks")
    p.add_argument("--model", help=model_help)
    p.add_argument("--data-dir", **data_dir)
    p.add_argument("--executions", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
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
            p.add_argument("--role-arn", required=True,
                           help="SageMaker execution role (training, the endpoint, and data capture writes)")
            p.add_argument("--bucket", required=True, help="your bucket for data, model artefacts and deployment code")
            p.add_argument("--data-dir", **data_dir)
            p.add_argument("--threshold", type=float, default=THRESHOLD, help=f"default {THRESHOLD}")
            p.add_argument("--container", metavar="IMAGE_URI",
                           help="serve the ONNX model with this bring-your-own container image (ECR URI; see "
                                "README) instead of training the built-in classifier")
            p.add_argument("--model", help="ONNX model for --container (default: scones_workflow/models/"
                                           "scones_classifier.onnx)")
            p.add_argument("--variants", action="store_true",
                           help="two weighted variants: the model serving now keeps 90%% (Primary), the new "
                                "one gets 10%% (Challenger); deploy again without it to promote")
            p.add_argument("--training-mode", choices=["pretrained", "scratch"], default="pretrained",
                           help="built-in classifier: ImageNet ResNet-18 at 224 px (default) or from scratch at 32 px")
            p.add_argument("--alarm-email", help="subscribe this address to the low-confidence alarm")
        else:
            p.add_argument("--delete-data", action="store_true",
                           help="also empty (every object version) and delete the retained data and capture buckets")
        p.set_defaults(func=cmd_deploy if name == "deploy" else cmd_teardown)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("moto").setLevel(logging.CRITICAL)  # logs every failed state; results show the errors
    args = build_parser().parse_args(argv)
    return args.func(args)
