"""The landmark predictor behind SageMaker's container contract: one photo per request, its tags back.

    python -m landmark_classifier.src.serve [serve] [--model FILE.onnx] [--host 0.0.0.0] [--port 8080]

What SageMaker runs (`docker run IMAGE serve`, see landmark_classifier/Dockerfile) for Batch Transform
or an endpoint: `common.inference_server` answers GET /ping, POST /invocations (image/jpeg, image/png,
application/x-image: a photo's bytes) and GET /execution-parameters. The answer is the bulk tagger's
line without its file and version, plus the open-set score the file's threshold was applied to:

    {"landmark": "Eiffel Tower" | null, "confidence", "top": [[name, p], ...],
     "gps": {"latitude", "longitude"} | null, "source": "metadata" | "model", "known_score"}

decoded and predicted by the tagger's own `Decoder` and `Labeller` (draft-mode JPEG decoding, EXIF GPS
from the request's bytes). A body that is no image, a truncated one or an empty one is a 400 naming the
problem on an endpoint; the server goes on serving. Under Batch Transform (SageMaker sets SAGEMAKER_BATCH=true)
it is a 200 with the tagger's error record instead, `{"error", "kind"}` (`tag.error_record`: its error line
without file and version), because SageMaker fails the whole job on an error answer and a photo library
always holds a few bad files; `batch_transform.join` turns it into the tagger's error line for the photo.

The model: --model, else $LANDMARK_MODEL, else /opt/ml/model/landmark_predictor.onnx (where SageMaker
unpacks the model's model.tar.gz) when it exists, else the committed models/landmark_predictor.onnx.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

from common import inference_server
from common.serving import ModelFileError, OnnxModel
from landmark_classifier.src import predictor, tag

MODEL_FILE = "landmark_predictor.onnx"  # its name in model.tar.gz, so under /opt/ml/model
OPT_ML_MODEL = Path("/opt/ml/model") / MODEL_FILE
MODEL_ENV = "LANDMARK_MODEL"
REQUEST = "the request body"  # how an error names the photo: the container never sees its S3 key
PAYLOAD_MB = 20  # a phone JPEG is a few MB; Batch Transform's default of 6 would refuse some
# CreateTransformJob: "the value of (MaxConcurrentTransforms * MaxPayloadInMB) also cannot exceed 100 MB"
PAYLOAD_BUDGET_MB = 100


def model_path(explicit: str | Path | None = None, opt_ml: Path = OPT_ML_MODEL) -> Path:
    """Which predictor to serve: `explicit`, $LANDMARK_MODEL, SageMaker's /opt/ml/model copy, the committed one."""
    if explicit:
        return Path(explicit)
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    return opt_ml if opt_ml.is_file() else predictor.DEFAULT_MODEL


class PhotoTagger:
    """A photo's bytes -> its tags (`tag.TAG_KEYS` + known_score); ImageError for what is no photo."""

    def __init__(self, model: OnnxModel, k: int = 5) -> None:
        self.labeller = tag.Labeller(model, k)
        self.decoder = tag.Decoder.for_model(model)

    def __call__(self, body: bytes) -> dict[str, Any]:
        array, gps = self.decoder.decode_image(tag.open_image(io.BytesIO(body)), REQUEST)
        prediction = self.labeller.predictions([array])[0]
        return {**self.labeller.tags(prediction, gps), "known_score": round(prediction.known_score, 4)}


def execution_parameters(cores: int, payload_mb: int) -> dict[str, Any]:
    """GET /execution-parameters: one photo per request, one request per core (each ONNX run takes one
    thread, as in the tagger), as many as fit the 100 MB budget at `payload_mb` each."""
    return {"MaxConcurrentTransforms": max(1, min(cores, PAYLOAD_BUDGET_MB // payload_mb)),
            "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": payload_mb}


def make_server(model: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                k: int = 5) -> inference_server.InferenceServer:
    """The server for the predictor at `model_path(model)`. Under Batch Transform (SAGEMAKER_BATCH) the body
    limit is the job's MaxPayloadInMB (SAGEMAKER_MAX_PAYLOAD_IN_MB) and a bad photo is answered with its error
    record; on an endpoint the limit is PAYLOAD_MB and a bad photo is a 400."""
    served = predictor.load(model_path(model), threads=1)
    limit = inference_server.batch_payload_limit(PAYLOAD_MB)
    return inference_server.InferenceServer(
        PhotoTagger(served, k), host=host, port=port, max_body_bytes=limit,
        execution_parameters=execution_parameters(os.cpu_count() or 1, limit // 2**20),
        bad_image_answer=tag.error_record if inference_server.in_batch_transform() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.serve",
        description="Serve the landmark predictor under SageMaker's container contract (GET /ping, POST "
                    "/invocations with one photo, GET /execution-parameters): what Batch Transform runs.")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"],
                        help="SageMaker starts the container as `docker run IMAGE serve`")
    parser.add_argument("--model", help=f"the exported predictor (default: ${MODEL_ENV}, {OPT_ML_MODEL} when it "
                                        f"exists, else the committed {predictor.DEFAULT_MODEL.name})")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, as in a container)")
    parser.add_argument("--port", type=int, default=0,
                        help="default: $SAGEMAKER_BIND_TO_PORT, $PORT, else 8080")
    parser.add_argument("-k", type=int, default=5, help="guesses per photo (default: 5)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.model, host=args.host, port=args.port or inference_server.port_from_env(),
                             k=args.k)
    except ModelFileError as err:
        print(f"error: cannot load the predictor: {err}", file=sys.stderr)
        return 2
    bad_photos = "answered as error records (Batch Transform)" if server.bad_image_answer else "a 400"
    print(f"serving {model_path(args.model)} on {server.url}; execution parameters "
          f"{server.execution_parameters}; bad photos {bad_photos}", flush=True)
    server.serve_until_stopped()  # SIGTERM (docker stop, SageMaker at the end of a job) stops it as Ctrl-C does
    return 0


if __name__ == "__main__":
    sys.exit(main())
