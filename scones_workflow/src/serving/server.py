"""Scones' inference server: the SageMaker container contract of `common.inference_server` (`GET /ping`,
`POST /invocations`, port from `SAGEMAKER_BIND_TO_PORT`/`PORT`) with what the Scones endpoint adds.

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
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common import inference_server
from common.inference_server import CONTENT_TYPES, HttpError, port_from_env  # noqa: F401 (this module's API)

from .capture import VARIANT, CaptureWriter

MAX_BODY_BYTES = inference_server.MAX_BODY_BYTES  # SageMaker's real-time payload limit (6 MB)
RUNTIME_PATH = re.compile(r"^/endpoints/([A-Za-z0-9-]{1,63})/invocations$")

TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
INVOKED_VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"

Predict = Callable[[bytes], list[float]]


@dataclass(frozen=True)
class Variant:
    """A production variant: its model and its share of the traffic (weights are relative, as in SageMaker)."""
    predict: Predict
    weight: float = 1.0


class InferenceServer(inference_server.InferenceServer):
    """The HTTP server. `predict` maps image bytes to probabilities (raising ImageError for bad images)
    and is the single variant `AllTraffic`; or `variants` maps names to `Variant(predict, weight)`.
    `predict` is then the first variant's model."""

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
        super().__init__(next(iter(self.variants.values())).predict, host=host, port=port)
        self.capture = capture
        self.invocations_by_variant = {name: 0 for name in self.variants}
        self._random = random.Random(seed)

    @property
    def max_body_bytes(self) -> int:
        return MAX_BODY_BYTES  # this module's, read per request (a test lowers it)

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

    def is_invocation_path(self, path: str) -> bool:
        return path == "/invocations" or RUNTIME_PATH.match(path) is not None

    def invoke(self, body: bytes, content_type: str, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
        variant = self.choose_variant(headers.get(TARGET_VARIANT_HEADER))
        probabilities = self.timed(self.variants[variant].predict, body)
        output = json.dumps([round(float(p), 6) for p in probabilities])
        with self._count_lock:
            self.invocations_by_variant[variant] = self.invocations_by_variant.get(variant, 0) + 1
        if self.capture is not None:
            self.capture.record(body, content_type, output, headers.get("X-Amzn-SageMaker-Inference-Id"),
                                variant=variant)
        return output.encode(), {INVOKED_VARIANT_HEADER: variant}

    def error_body(self, status: int, message: str, path: str,
                   error_type: str = "ModelError") -> tuple[int, bytes, dict[str, str]]:
        runtime = RUNTIME_PATH.match(path) is not None
        if runtime and error_type == "ValidationError":  # refused by the runtime service, not the container
            return 400, json.dumps({"message": message}).encode(), {"x-amzn-ErrorType": "ValidationError"}
        if runtime and status != 404:
            # What the SageMaker runtime service answers when the container returns an error.
            payload = {"message": f"Received client error ({status}) from primary with message \"{message}\"",
                       "OriginalStatusCode": status, "OriginalMessage": message}
            return 424, json.dumps(payload).encode(), {"x-amzn-ErrorType": "ModelError"}
        return super().error_body(status, message, path, error_type)

    def stop(self) -> None:
        """Stop serving and flush the captures (no record is lost on shutdown)."""
        super().stop()
        if self.capture is not None:
            self.capture.close()
