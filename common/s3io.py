"""One read/write API for local paths and ``s3://`` URIs, built on cloudpathlib.

Every function takes a local path or an S3 URI plus an optional ``endpoint_url``
(for MinIO, LocalStack or a moto server; without it boto3's usual resolution applies,
including the ``AWS_ENDPOINT_URL`` environment variable). Local writes are atomic.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from cloudpathlib import S3Client, S3Path

import jsonlines

from common import paths

if TYPE_CHECKING:
    import boto3

PathOrUri = str | os.PathLike


def to_path(uri: PathOrUri, *, endpoint_url: str | None = None,
            session: boto3.Session | None = None) -> Path | S3Path:
    """Return a local ``Path`` or an ``S3Path`` for ``uri`` (``session``: a boto3 Session to use).

    A new ``S3Client`` is made per call so that no boto3 client outlives the
    credentials, endpoint or moto mock it was created under.
    """
    text = os.fspath(uri)
    if S3Path.is_valid_cloudpath(text):
        return S3Path(text, client=S3Client(endpoint_url=endpoint_url, boto3_session=session))
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


def upload_folder(local_dir: PathOrUri, s3_uri: PathOrUri, *, endpoint_url: str | None = None,
                  session: boto3.Session | None = None, skip_unchanged: bool = False,
                  log: Callable[[str], None] | None = None) -> list[str]:
    """Upload every file under ``local_dir`` to the same relative key under ``s3_uri``; returns the
    URIs uploaded.

    ``session``: a boto3 Session whose credentials and region to use (a SageMaker launcher's).
    ``skip_unchanged`` leaves out files already there with the same size, so a dataset is uploaded
    once, not per job; the prefix is listed once (paginated), not one HEAD per file. ``log`` gets a
    line before anything is uploaded.
    """
    local = Path(local_dir)
    if not local.is_dir():
        raise FileNotFoundError(f"local folder not found: {local}")
    target = _s3_path(s3_uri, endpoint_url, session)
    files = {target / file.relative_to(local).as_posix(): file for file in map(Path, list_files(local))}
    there = _sizes(target) if skip_unchanged else {}
    new = {dest: file for dest, file in files.items() if there.get(str(dest)) != file.stat().st_size}
    if new and log:
        log(f"uploading {len(new)} of {len(files)} files of {paths.display(local)} to {target}")
    # boto3's upload_file: one PUT (multipart when large) per file; S3Path.upload_from would first ask
    # whether the key is a folder, a HEAD and a LIST more per file
    for dest, file in new.items():
        target.client.client.upload_file(str(file), dest.bucket, dest.key)
    return [str(dest) for dest in new]


def _sizes(folder: S3Path) -> dict[str, int]:
    """The size of each object under ``folder`` by URI, from one paginated listing."""
    # listed as "data/toy/": the prefix "data/toy" would also list data/toy2/
    listed = iter_objects(str(folder).rstrip("/") + "/", client=folder.client.client)
    return {o["uri"]: o["size"] for o in listed}


def _s3_path(uri: PathOrUri, endpoint_url: str | None, session: boto3.Session | None = None) -> S3Path:
    path = to_path(uri, endpoint_url=endpoint_url, session=session)
    if not isinstance(path, S3Path):
        raise ValueError(f"expected an s3:// URI, got {os.fspath(uri)}")
    return path


def iter_objects(uri: PathOrUri, *, endpoint_url: str | None = None, client: Any = None) -> Iterator[dict]:
    """Every object under an ``s3://`` prefix as ``{"uri", "size", "etag"}``, in key order, one
    ListObjectsV2 page (1,000 keys) at a time: a prefix of millions of objects is never held in memory."""
    path = _s3_path(uri, endpoint_url)
    client = client or path.client.client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=path.bucket, Prefix=path.key)
    for page in pages:
        for entry in page.get("Contents", []):
            yield {"uri": f"s3://{path.bucket}/{entry['Key']}", "size": entry["Size"],
                   "etag": entry["ETag"].strip('"')}
