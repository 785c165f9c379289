"""A SageMaker-contract inference server: `GET /ping`, `POST /invocations`, port from `SAGEMAKER_BIND_TO_PORT`/`PORT`.

It also serves the runtime API path `POST /endpoints/<name>/invocations`, so that
`boto3.client("sagemaker-runtime", endpoint_url="http://127.0.0.1:8080").invoke_endpoint(...)`,
the call the classify Lambda makes in AWS, works against it unchanged. On that path errors come
back as the runtime service reports them: a `ModelError` (HTTP 424) carrying the container's
status and message, which boto3 raises as `SageMakerRuntime.Client.exceptions.ModelError`.

Requests take `image/png`, `image/jpeg` (or `application/x-image`, as the built-in algorithm does) and
answer the built-in image classifier's format, a JSON list `[p_bicycle, p_motorcycle]`. Every
answered inference is captured (see `capture.py`). No request can stop the server: every error
becomes an HTTP status with a JSON message.

Production variants: like an endpoint config with several `ProductionVariants`, the server can hold
several models with weights (e.g. 90/10). Each request goes to a variant drawn by weight, or to the
one named by the `X-Amzn-SageMaker-Target-Variant` header (boto3's `TargetVariant`); the answer names
it in `X-Amzn-Invoked-Production-Variant` (boto3's `InvokedProductionVariant`), and its capture goes
under `<endpoint>/<variant>/yyyy/mm/dd/hh/`, as SageMaker writes it.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.images import ImageError

from .capture import VARIANT, CaptureWriter

log = logging.getLogger(__name__)

CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")
MAX_BODY_BYTES = 6 * 2**20  # SageMaker's real-time payload limit (6 MB)
DISCARD_LIMIT = 64 * 2**20  # refused bodies up to this size are read and dropped, larger ones close the connection
RUNTIME_PATH = re.compile(r"^/endpoints/([A-Za-z0-9-]{1,63})/invocations$")

TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
INVOKED_VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"

Predict = Callable[[bytes], list[float]]


@dataclass(frozen=True)
class Variant:
    """A production variant: its model and its share of the traffic (weights are relative, as in SageMaker)."""
    predict: Predict
    weight: float = 1.0


class HttpError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "ModelError") -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type


class InferenceServer(ThreadingHTTPServer):
    """The HTTP server. `predict` maps image bytes to probabilities (raising ImageError for bad images)
    and is the single variant `AllTraffic`; or `variants` maps names to `Variant(predict, weight)`."""

    daemon_threads = True

    def __init__(self, predict: Predict | None = None, *, variants: Mapping[str, Variant] | None = None,
                 host: str = "127.0.0.1", port: int = 8080, capture: CaptureWriter | None = None,
                 seed: int | None = None) -> None:
        if (predict is None) == (variants is None):
            raise ValueError("give either `predict` (one variant) or `variants`, not both")
        self.variants = dict(variants) if variants is not None else {VARIANT: Variant(predict)}
        if not self.variants or any(v.weight < 0 for v in self.variants.values()) or \
                sum(v.weight for v in self.variants.values()) <= 0:
            raise ValueError(f"variant weights must be >= 0 with a positive sum, got "
                             f"{ {n: v.weight for n, v in self.variants.items()} }")
        super().__init__((host, port), _Handler)
        self.capture = capture
        self.invocations = 0
        self.invocations_by_variant = {name: 0 for name in self.variants}
        self.model_seconds = 0.0  # summed time inside the models (decode + inference), for load breakdowns
        self._count_lock = threading.Lock()
        self._random = random.Random(seed)
        self._thread: threading.Thread | None = None

    @property
    def predict(self) -> Predict:
        """The first variant's model (the only one without variants)."""
        return next(iter(self.variants.values())).predict

    def choose_variant(self, target: str | None) -> str:
        """The variant named by the TargetVariant header, else one drawn by weight."""
        if target:
            if target not in self.variants:
                raise HttpError(400, f"target variant {target!r} does not exist on this endpoint; variants: "
                                     f"{', '.join(self.variants)}", error_type="ValidationError")
            return target
        names = list(self.variants)
        with self._count_lock:
            return self._random.choices(names, weights=[self.variants[n].weight for n in names])[0]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "InferenceServer":
        """Serve in a background thread (for notebooks and tests)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="inference-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and flush the captures (no record is lost on shutdown)."""
        self.shutdown()
        self.server_close()
        if self.capture is not None:
            self.capture.close()

    def count_invocation(self, variant: str = VARIANT, seconds: float = 0.0) -> None:
        with self._count_lock:
            self.invocations += 1
            self.model_seconds += seconds
            self.invocations_by_variant[variant] = self.invocations_by_variant.get(variant, 0) + 1

    def __enter__(self) -> "InferenceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: InferenceServer
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses its connections
    # TCP_NODELAY: the answer goes out as two writes (headers, then body). With Nagle's algorithm on, the
    # body waits for the client to ACK the headers, and clients delay that ACK up to 40 ms: every keep-alive
    # request then took >= 40 ms and 8 clients got ~180 answers/s even from a model that costs nothing.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._send(200, b"", "text/plain")
        else:
            self._send_error(404, f"no such path: GET {self.path}", runtime=False)

    def do_POST(self) -> None:
        runtime = RUNTIME_PATH.match(self.path) is not None
        try:
            if self.path != "/invocations" and not runtime:
                self._discard_body()
                raise HttpError(404, f"no such path: POST {self.path}")
            body = self._read_body()
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in CONTENT_TYPES:
                raise HttpError(415, f"unsupported content type {content_type or '(none)'!r}; "
                                     f"send one of {', '.join(CONTENT_TYPES)}")
            variant = self.server.choose_variant(self.headers.get(TARGET_VARIANT_HEADER))
            started = time.perf_counter()
            try:
                probabilities = self.server.variants[variant].predict(body)
            except ImageError as err:
                raise HttpError(400, str(err)) from None
            output = json.dumps([round(float(p), 6) for p in probabilities])
            self.server.count_invocation(variant, time.perf_counter() - started)
            if self.server.capture is not None:
                self.server.capture.record(body, content_type, output,
                                           self.headers.get("X-Amzn-SageMaker-Inference-Id"), variant=variant)
            self._send(200, output.encode(), "application/json", {INVOKED_VARIANT_HEADER: variant})
        except HttpError as err:
            self._send_error(err.status, str(err), runtime=runtime, error_type=err.error_type)
        except Exception as err:  # a bug must cost one request, never the server
            log.exception("inference failed")
            self._send_error(500, f"internal error: {type(err).__name__}: {err}", runtime=runtime)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise HttpError(411, "a Content-Length header is required") from None
        if length > MAX_BODY_BYTES:
            self._discard_body()
            raise HttpError(413, f"payload of {length:,} bytes exceeds the {MAX_BODY_BYTES:,}-byte limit")
        body = self.rfile.read(length)
        if not body:
            raise HttpError(400, "empty request body: no image data")
        return body

    def _discard_body(self) -> None:
        """Read and drop a refused request's body: left unread it would corrupt the next request on this
        connection, and closing a socket with unread data resets it before the client reads our answer.
        Beyond DISCARD_LIMIT bytes the connection is closed instead."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = DISCARD_LIMIT + 1
        if length > DISCARD_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _send_error(self, status: int, message: str, *, runtime: bool, error_type: str = "ModelError") -> None:
        if runtime and error_type == "ValidationError":  # refused by the runtime service, not the container
            self._send(400, json.dumps({"message": message}).encode(), "application/json",
                       {"x-amzn-ErrorType": "ValidationError"})
        elif runtime and status != 404:
            # What the SageMaker runtime service answers when the container returns an error.
            payload = {"message": f"Received client error ({status}) from primary with message \"{message}\"",
                       "OriginalStatusCode": status, "OriginalMessage": message}
            self._send(424, json.dumps(payload).encode(), "application/json", {"x-amzn-ErrorType": "ModelError"})
        else:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def port_from_env(default: int = 8080) -> int:
    """SageMaker sets SAGEMAKER_BIND_TO_PORT for some hosting modes; PORT for everything else."""
    return int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or os.environ.get("PORT") or default)
