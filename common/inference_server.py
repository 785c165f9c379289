"""The SageMaker inference-container contract as an HTTP server, for any project's model.

`GET /ping` (200, empty: ready), `POST /invocations` (the model's answer as JSON), the port from
`SAGEMAKER_BIND_TO_PORT`/`PORT` (default 8080), and, when the server is given execution parameters,
Batch Transform's optional `GET /execution-parameters`
(https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html: "a simple JSON object
with keys for MaxConcurrentTransforms, BatchStrategy, and MaxPayloadInMB", asked before the first
/invocations; without it SageMaker uses 1, MULTI_RECORD and 6 MB unless the job sets them).

Requests take `image/png`, `image/jpeg` or `application/x-image` with a Content-Length (chunked bodies,
which Batch Transform sends only when a job sets MaxPayloadInMB to 0, are refused with 411). `predict`
maps the request's bytes to any JSON-able answer and raises `common.images.ImageError` for a bad image.
No request can stop the server: every error becomes an HTTP status with a JSON body `{"error": message}`,
except a bad image (or an empty body) when the server is given `bad_image_answer`: that is answered 200 with
its record. Batch Transform needs it: "If a batch transform job fails to process an input file because of a
problem with the dataset, SageMaker marks the job as failed", and its advice for your own algorithm is an
error placeholder in the output instead (https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform.html,
Batch Transform Errors). SageMaker tells the container it runs one: `SAGEMAKER_BATCH` is "true"
(`in_batch_transform`, the same page as the execution parameters below).

Projects extend it by subclassing: `invoke` (which model answers, what else is recorded), `error_body`
(how an error is reported on a path), `bad_image` (the answer to a bad image) and `is_invocation_path`
(Scones adds the runtime API's path).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.images import ImageError

log = logging.getLogger(__name__)

CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")
MAX_BODY_BYTES = 6 * 2**20  # SageMaker's real-time payload limit (6 MB), also Batch Transform's default
DISCARD_LIMIT = 64 * 2**20  # refused bodies up to this size are read and dropped, larger ones close the connection

Predict = Callable[[bytes], Any]


class HttpError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "ModelError") -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type


class InferenceServer(ThreadingHTTPServer):
    """The HTTP server: `predict` maps a request's image bytes to a JSON-able answer.
    `execution_parameters` (e.g. {"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD",
    "MaxPayloadInMB": 16}) are answered on GET /execution-parameters; None: that path is a 404.
    `bad_image_answer` maps the ImageError of a body that is no usable image to the record answered for it
    with a 200; None: a 400 naming the problem."""

    daemon_threads = True

    def __init__(self, predict: Predict, *, host: str = "127.0.0.1", port: int = 8080,
                 max_body_bytes: int | None = None, execution_parameters: Mapping[str, Any] | None = None,
                 bad_image_answer: Callable[[ImageError], Any] | None = None) -> None:
        super().__init__((host, port), Handler)
        self.predict = predict
        self.bad_image_answer = bad_image_answer
        self.execution_parameters = dict(execution_parameters) if execution_parameters is not None else None
        self._max_body_bytes = max_body_bytes
        self.invocations = 0
        self.model_seconds = 0.0  # summed time inside the models (decode + inference), for load breakdowns
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def max_body_bytes(self) -> int:
        """The largest body answered (413 beyond it); default: this module's MAX_BODY_BYTES."""
        return self._max_body_bytes if self._max_body_bytes is not None else MAX_BODY_BYTES

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ what subclasses change

    def is_invocation_path(self, path: str) -> bool:
        return path == "/invocations"

    def invoke(self, body: bytes, content_type: str, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
        """The answer's JSON bytes and any extra response headers. ImageError: the handler's 400."""
        answer = self.timed(self.predict, body)
        return json.dumps(answer).encode(), {}

    def bad_image(self, err: ImageError) -> tuple[bytes, dict[str, str]]:
        """The 200 answer (JSON bytes, headers) for a body that is no usable image when `bad_image_answer` is
        given; else the 400 that names the problem."""
        if self.bad_image_answer is None:
            raise HttpError(400, str(err))
        return json.dumps(self.bad_image_answer(err)).encode(), {}

    def error_body(self, status: int, message: str, path: str,
                   error_type: str = "ModelError") -> tuple[int, bytes, dict[str, str]]:
        """(status, JSON body, headers) of an error on `path`."""
        return status, json.dumps({"error": message}).encode(), {}

    # ------------------------------------------------------------------ helpers and lifecycle

    def timed(self, predict: Predict, body: bytes) -> Any:
        """`predict(body)`, counted in `invocations` and `model_seconds` when it answers."""
        started = time.perf_counter()
        answer = predict(body)
        with self._count_lock:
            self.invocations += 1
            self.model_seconds += time.perf_counter() - started
        return answer

    def start(self) -> "InferenceServer":
        """Serve in a background thread (for notebooks and tests)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="inference-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def serve_until_stopped(self) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM (docker stop; SageMaker ending a job or replacing an
        endpoint's instances), then close the socket: a container's main loop."""
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.shutdown).start())
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()

    def __enter__(self) -> "InferenceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Handler(BaseHTTPRequestHandler):
    server: InferenceServer
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 and Batch Transform reuse their connections
    # TCP_NODELAY: the answer goes out as two writes (headers, then body). With Nagle's algorithm on, the
    # body waits for the client to ACK the headers, and clients delay that ACK up to 40 ms: every keep-alive
    # request then took >= 40 ms and 8 clients got ~180 answers/s even from a model that costs nothing.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._send(200, b"", "text/plain")
        elif self.path == "/execution-parameters" and self.server.execution_parameters is not None:
            self._send(200, json.dumps(self.server.execution_parameters).encode(), "application/json")
        else:
            self._send_error(404, f"no such path: GET {self.path}")

    def do_POST(self) -> None:
        try:
            if not self.server.is_invocation_path(self.path):
                self._discard_body()
                raise HttpError(404, f"no such path: POST {self.path}")
            body = self._read_body()
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in CONTENT_TYPES:
                raise HttpError(415, f"unsupported content type {content_type or '(none)'!r}; "
                                     f"send one of {', '.join(CONTENT_TYPES)}")
            try:
                if not body:
                    raise ImageError("empty request body: no image data")
                output, headers = self.server.invoke(body, content_type, self.headers)
            except ImageError as err:
                output, headers = self.server.bad_image(err)
            self._send(200, output, "application/json", headers)
        except HttpError as err:
            self._send_error(err.status, str(err), err.error_type)
        except Exception as err:  # a bug must cost one request, never the server
            log.exception("inference failed")
            self._send_error(500, f"internal error: {type(err).__name__}: {err}")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise HttpError(411, "a Content-Length header is required") from None
        limit = self.server.max_body_bytes
        if length > limit:
            self._discard_body()
            raise HttpError(413, f"payload of {length:,} bytes exceeds the {limit:,}-byte limit")
        return self.rfile.read(length)

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

    def _send_error(self, status: int, message: str, error_type: str = "ModelError") -> None:
        status, body, headers = self.server.error_body(status, message, self.path, error_type)
        self._send(status, body, "application/json", headers)

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


def in_batch_transform() -> bool:
    """Whether the container serves a Batch Transform job: SageMaker sets SAGEMAKER_BATCH to "true" there
    (your-algorithms-batch-code.html), not on a real-time endpoint."""
    return os.environ.get("SAGEMAKER_BATCH", "").strip().lower() == "true"


def batch_payload_limit(default_mb: int) -> int:
    """The body limit in bytes under Batch Transform: SAGEMAKER_MAX_PAYLOAD_IN_MB, which SageMaker sets to the
    job's MaxPayloadInMB ("the largest size payload that is sent to the container"), else `default_mb`."""
    value = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB")
    megabytes = int(value) if value and int(value) > 0 else default_mb  # 0: chunked, which this server refuses
    return megabytes * 2**20
