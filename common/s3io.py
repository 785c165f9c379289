"""One read/write API for local paths and ``s3://`` URIs, built on cloudpathlib.

Every function takes a local path or an S3 URI plus an optional ``endpoint_url``
(for MinIO, LocalStack or a moto server; without it boto3's usual resolution applies,
including the ``AWS_ENDPOINT_URL`` environment variable). Local writes are atomic.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from cloudpathlib import S3Client, S3Path

import jsonlines

PathOrUri = str | os.PathLike


def to_path(uri: PathOrUri, *, endpoint_url: str | None = None) -> Path | S3Path:
    """Return a local ``Path`` or an ``S3Path`` for ``uri``.

    A new ``S3Client`` is made per call so that no boto3 client outlives the
    credentials, endpoint or moto mock it was created under.
    """
    text = os.fspath(uri)
    if S3Path.is_valid_cloudpath(text):
        return S3Path(text, client=S3Client(endpoint_url=endpoint_url))
    return Path(text)


def read_bytes(uri: PathOrUri, *, endpoint_url: str | None = None) -> bytes:
    # Both backends raise FileNotFoundError naming the path or URI.
    return to_path(uri, endpoint_url=endpoint_url).read_bytes()


def write_bytes(uri: PathOrUri, data: bytes, *, endpoint_url: str | None = None) -> None:
    path = to_path(uri, endpoint_url=endpoint_url)
    if isinstance(path, S3Path):
        path.write_bytes(data)  # an S3 PUT is atomic already
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp file in the same folder, so os.replace is an atomic rename; open()
    # rather than mkstemp so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(uri: PathOrUri, *, endpoint_url: str | None = None) -> str:
    return read_bytes(uri, endpoint_url=endpoint_url).decode("utf-8")


def write_text(uri: PathOrUri, text: str, *, endpoint_url: str | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), endpoint_url=endpoint_url)


def read_jsonl(uri: PathOrUri, *, endpoint_url: str | None = None) -> list[dict]:
    """Read a JSON Lines file of objects; blank lines are skipped."""
    lines = io.StringIO(read_text(uri, endpoint_url=endpoint_url))
    try:
        return list(jsonlines.Reader(lines).iter(type=dict, skip_empty=True))
    except jsonlines.InvalidLineError as err:
        detail = err.__cause__ or err  # the json error, when there is one
        raise ValueError(f"invalid JSON Lines in {os.fspath(uri)}, line {err.lineno}: {detail}") from None


def write_jsonl(uri: PathOrUri, records: Iterable[dict], *, endpoint_url: str | None = None) -> None:
    buffer = io.StringIO()
    jsonlines.Writer(buffer, compact=True).write_all(records)
    write_text(uri, buffer.getvalue(), endpoint_url=endpoint_url)


def read_csv(uri: PathOrUri, *, endpoint_url: str | None = None, **pandas_kwargs: Any) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_bytes(uri, endpoint_url=endpoint_url)), **pandas_kwargs)


def write_csv(
    uri: PathOrUri, df: pd.DataFrame, index: bool = False, *, endpoint_url: str | None = None, **kwargs: Any
) -> None:
    write_text(uri, df.to_csv(index=index, **kwargs), endpoint_url=endpoint_url)


def exists(uri: PathOrUri, *, endpoint_url: str | None = None) -> bool:
    return to_path(uri, endpoint_url=endpoint_url).exists()


def list_files(uri: PathOrUri, suffix: str | None = None, *, endpoint_url: str | None = None) -> list[str]:
    """All files under ``uri`` (recursive, sorted) as full paths/URIs; [] if there are none.

    ``suffix`` matches the end of the file name, so ``".csv.gz"`` works.
    """
    root = to_path(uri, endpoint_url=endpoint_url)
    # S3Path.walk lists the whole prefix in one request; Path.walk needs Python 3.12.
    walk = root.walk() if isinstance(root, S3Path) else ((Path(d), ds, fs) for d, ds, fs in os.walk(root))
    return sorted(str(d / f) for d, _, files in walk for f in files if suffix is None or f.endswith(suffix))


def upload_folder(local_dir: PathOrUri, s3_uri: PathOrUri, *, endpoint_url: str | None = None) -> list[str]:
    """Upload every file under ``local_dir`` to the same relative key under ``s3_uri``."""
    local = Path(local_dir)
    if not local.is_dir():
        raise FileNotFoundError(f"local folder not found: {local}")
    target = _s3_path(s3_uri, endpoint_url)
    uploaded = []
    for file in map(Path, list_files(local)):
        dest = target / file.relative_to(local).as_posix()
        dest.upload_from(file, force_overwrite_to_cloud=True)
        uploaded.append(str(dest))
    return uploaded


def _s3_path(uri: PathOrUri, endpoint_url: str | None) -> S3Path:
    path = to_path(uri, endpoint_url=endpoint_url)
    if not isinstance(path, S3Path):
        raise ValueError(f"expected an s3:// URI, got {os.fspath(uri)}")
    return path
