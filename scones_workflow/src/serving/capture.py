"""Data capture written exactly as a SageMaker endpoint writes it.

One JSON object per inference, in JSON Lines files under
`<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm-ss-mmm-uuid>.jsonl` (the hour of the
inference, UTC), to a local folder or an `s3://` prefix through `common.s3io`:

    {"captureData": {"endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                                       "data": "<base64>", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "[0.98, 0.02]", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-01-02T03:04:05Z"},
     "eventVersion": "0"}

With several production variants, each variant's records go under its own name, as SageMaker
writes them (`record(..., variant="Challenger")`).

Records are buffered and written in batches (one object per batch, as S3 has no append); a lock
guards the buffer so concurrent requests neither lose nor duplicate a record, a background thread
flushes every `flush_seconds`, and `close()` flushes the rest.
"""
from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timezone

from common import s3io

log = logging.getLogger(__name__)

VARIANT = "AllTraffic"  # SageMaker's default production variant name


def capture_record(input_data: bytes, input_type: str, output_json: str, *, event_id: str | None = None,
                   inference_id: str | None = None, when: datetime | None = None) -> dict:
    """One capture record in SageMaker's format (eventVersion "0"); `inference_id` is the caller's
    InferenceId, which SageMaker records in eventMetadata when one is sent."""
    when = when or datetime.now(timezone.utc)
    metadata = {"eventId": event_id or str(uuid.uuid4()), "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {
        "captureData": {
            "endpointInput": {"observedContentType": input_type, "mode": "INPUT",
                              "data": base64.b64encode(input_data).decode("ascii"), "encoding": "BASE64"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": output_json, "encoding": "JSON"},
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    }


def capture_key(destination: str, endpoint: str, variant: str, when: datetime) -> str:
    """Where SageMaker would put a capture file written at `when`."""
    name = f"{when:%M-%S}-{when.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
    return f"{destination.rstrip('/')}/{endpoint}/{variant}/{when:%Y/%m/%d/%H}/{name}"


class CaptureWriter:
    """Buffers capture records and writes them as JSON Lines files; thread-safe."""

    def __init__(self, destination: str, endpoint: str, *, variant: str = VARIANT, max_records: int = 200,
                 flush_seconds: float = 5.0, endpoint_url: str | None = None) -> None:
        self.destination, self.endpoint, self.variant = str(destination), endpoint, variant
        self.max_records, self.endpoint_url = max_records, endpoint_url
        self._buffer: list[tuple[datetime, str, dict]] = []
        self._lock = threading.Lock()        # guards _buffer
        self._write_lock = threading.Lock()  # one flush at a time, so files appear in order
        self.records_written = 0
        self.files_written: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, args=(flush_seconds,), daemon=True,
                                        name="capture-flush")
        self._thread.start()

    def record(self, input_data: bytes, input_type: str, output_json: str, inference_id: str | None = None,
               variant: str | None = None) -> str:
        """Buffer one inference of `variant` (default: the writer's); returns its event id."""
        when = datetime.now(timezone.utc)
        record = capture_record(input_data, input_type, output_json, inference_id=inference_id, when=when)
        with self._lock:
            self._buffer.append((when, variant or self.variant, record))
            full = len(self._buffer) >= self.max_records
        if full:
            self.flush()
        return record["eventMetadata"]["eventId"]

    def flush(self) -> int:
        """Write every buffered record; returns how many. A failed write keeps them for the next flush."""
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            by_hour: dict[tuple[str, datetime], list[tuple[datetime, str, dict]]] = defaultdict(list)
            for when, variant, record in batch:
                by_hour[variant, when.replace(minute=0, second=0, microsecond=0)].append((when, variant, record))
            written = 0
            for (variant, _), items in by_hour.items():
                key = capture_key(self.destination, self.endpoint, variant, items[0][0])
                try:
                    s3io.write_jsonl(key, [record for _, _, record in items], endpoint_url=self.endpoint_url)
                except Exception:
                    log.exception("could not write %d capture record(s) to %s; kept for the next flush",
                                  len(items), key)
                    with self._lock:
                        self._buffer[:0] = items
                    continue
                written += len(items)
                self.files_written.append(key)
            self.records_written += written
            return written

    def _flush_periodically(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.flush()

    def close(self) -> None:
        """Stop the background flusher and write what is left."""
        self._stop.set()
        self._thread.join()
        self.flush()
