"""Tests for common.s3io: local round trips, errors, and S3 through moto."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pandas as pd
import pytest
from cloudpathlib import S3Path
from moto import mock_aws

from common import s3io

BUCKET = "portfolio-test"
RECORDS = [{"id": 1, "label": "cat"}, {"id": 2, "label": "chien é"}]
DF = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(aws_env):
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"


def assert_round_trips(root: str) -> None:
    s3io.write_bytes(f"{root}/raw.bin", b"\x00\x01\xff")
    assert s3io.read_bytes(f"{root}/raw.bin") == b"\x00\x01\xff"
    s3io.write_text(f"{root}/note.txt", "héllo\n")
    assert s3io.read_text(f"{root}/note.txt") == "héllo\n"
    s3io.write_jsonl(f"{root}/rows.jsonl", RECORDS)
    assert s3io.read_jsonl(f"{root}/rows.jsonl") == RECORDS
    s3io.write_csv(f"{root}/table.csv", DF)
    pd.testing.assert_frame_equal(s3io.read_csv(f"{root}/table.csv"), DF)
    assert s3io.exists(f"{root}/table.csv")
    assert not s3io.exists(f"{root}/absent.csv")


# --- local -------------------------------------------------------------------


def test_to_path_dispatches_on_scheme(tmp_path, aws_env):
    assert s3io.to_path(tmp_path / "a.txt") == tmp_path / "a.txt"
    assert isinstance(s3io.to_path(str(tmp_path)), Path)
    s3 = s3io.to_path("s3://bucket/key/file.csv")
    assert isinstance(s3, S3Path)
    assert (s3.bucket, s3.key) == ("bucket", "key/file.csv")


def test_local_round_trips_create_parent_dirs(tmp_path):
    assert_round_trips(str(tmp_path / "nested" / "dir"))


def test_write_csv_passes_kwargs(tmp_path):
    s3io.write_csv(tmp_path / "t.csv", DF, index=True, sep=";")
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == ";a;b"
    assert s3io.read_csv(tmp_path / "t.csv", sep=";", index_col=0).equals(DF)


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    s3io.write_text(target, '{"version": 1}')
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

    def crash(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(s3io.os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        s3io.write_bytes(target, b'{"version": 2}')
    # The old content survives and the temp file is cleaned up.
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_missing_local_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    for read in (s3io.read_bytes, s3io.read_text, s3io.read_jsonl, s3io.read_csv):
        with pytest.raises(FileNotFoundError, match="nope.json"):
            read(missing)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"invalid JSON Lines in .*bad\.jsonl, line 1"):
        s3io.read_jsonl(bad)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": oops}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 4"):
        s3io.read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 2"):
        s3io.read_jsonl(path)


def test_jsonl_is_one_compact_object_per_line(tmp_path):
    s3io.write_jsonl(tmp_path / "a.jsonl", RECORDS)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == len(RECORDS) and all(": " not in line for line in lines)
    assert s3io.read_jsonl(tmp_path / "a.jsonl") == RECORDS


def test_list_files_local(tmp_path):
    for rel in ["b.csv", "a.txt", "sub/c.csv", "sub/deeper/d.csv.gz"]:
        s3io.write_text(tmp_path / rel, rel)
    assert s3io.list_files(tmp_path) == sorted(
        str(tmp_path / r) for r in ["a.txt", "b.csv", "sub/c.csv", "sub/deeper/d.csv.gz"]
    )
    assert s3io.list_files(tmp_path, suffix=".csv") == [str(tmp_path / "b.csv"), str(tmp_path / "sub/c.csv")]
    assert s3io.list_files(tmp_path, suffix=".csv.gz") == [str(tmp_path / "sub/deeper/d.csv.gz")]
    assert s3io.list_files(tmp_path / "missing") == []


# --- S3 (moto) ---------------------------------------------------------------


def test_s3_round_trips(bucket):
    assert_round_trips(f"{bucket}/run-1")
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="run-1/rows.jsonl")["Body"].read()
    assert [json.loads(line) for line in body.splitlines()] == RECORDS


def test_s3_missing_object_names_the_uri(bucket):
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nope.json"):
        s3io.read_text(f"{bucket}/nope.json")


def test_s3_malformed_jsonl_names_uri_and_line(bucket):
    s3io.write_text(f"{bucket}/rows.jsonl", '{"a": 1}\n{broken\n')
    with pytest.raises(ValueError, match=rf"{bucket}/rows\.jsonl, line 2"):
        s3io.read_jsonl(f"{bucket}/rows.jsonl")


def test_s3_list_files_is_recursive_sorted_and_filtered(bucket):
    for key in ["data/b.csv", "data/a.json", "data/sub/c.csv", "data2/other.csv"]:
        s3io.write_text(f"{bucket}/{key}", key)
    assert s3io.list_files(f"{bucket}/data") == [
        f"{bucket}/data/a.json",
        f"{bucket}/data/b.csv",
        f"{bucket}/data/sub/c.csv",
    ]
    assert s3io.list_files(f"{bucket}/data/", suffix=".csv") == [f"{bucket}/data/b.csv", f"{bucket}/data/sub/c.csv"]
    assert s3io.list_files(f"{bucket}/empty") == []


def test_upload_folder_keeps_relative_keys_and_contents(bucket, tmp_path):
    src = tmp_path / "model"
    files = {"model.pt": b"weights", "config.json": b"{}", "tokenizer/vocab.txt": b"a\nb", "tokenizer/x/y.bin": b"\x00"}
    for rel, data in files.items():
        s3io.write_bytes(src / rel, data)

    uploaded = s3io.upload_folder(src, f"{bucket}/artifacts/model")
    assert uploaded == sorted(f"{bucket}/artifacts/model/{rel}" for rel in files)
    assert s3io.list_files(f"{bucket}/artifacts") == uploaded
    assert {uri.removeprefix(f"{bucket}/artifacts/model/"): s3io.read_bytes(uri) for uri in uploaded} == files


def test_upload_folder_skip_unchanged_uploads_only_files_whose_size_changed(bucket, tmp_path):
    src = tmp_path / "data"
    for rel, data in {"a.csv": b"1,2\n", "sub/b.bin": b"\x00\x01", "c.txt": b"same"}.items():
        s3io.write_bytes(src / rel, data)
    uri, lines = f"{bucket}/data/toy/", []
    assert len(s3io.upload_folder(src, uri, skip_unchanged=True, log=lines.append)) == 3
    assert lines == [f"uploading 3 of 3 files of {src} to {uri}"]

    session, calls = boto3.Session(), []
    session.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    assert s3io.upload_folder(src, uri, session=session, skip_unchanged=True, log=lines.append) == []
    assert calls == ["ListObjectsV2"]  # one listing of the prefix, no request per file
    assert len(lines) == 1  # nothing to upload, nothing said
    (src / "a.csv").write_bytes(b"1,2\n3,4\n")  # a new size
    (src / "c.txt").write_bytes(b"diff")  # same size: taken as unchanged, as documented
    assert s3io.upload_folder(src, uri, skip_unchanged=True) == [f"{uri}a.csv"]
    assert s3io.read_bytes(f"{uri}a.csv") == b"1,2\n3,4\n" and s3io.read_bytes(f"{uri}c.txt") == b"same"
    # without the option every file goes up again
    assert len(s3io.upload_folder(src, uri)) == 3


def test_folder_errors(bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        s3io.upload_folder(tmp_path / "no-such-dir", f"{bucket}/x")
    with pytest.raises(ValueError, match="expected an s3:// URI"):
        s3io.upload_folder(tmp_path, tmp_path / "elsewhere")


def test_endpoint_url_against_moto_server(aws_env):
    from moto.server import ThreadedMotoServer  # needs moto[server]; imported here so only this test needs it

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/via-endpoint/rows.jsonl"

        s3io.write_jsonl(uri, RECORDS, endpoint_url=endpoint)
        assert s3io.read_jsonl(uri, endpoint_url=endpoint) == RECORDS
        assert s3io.exists(uri, endpoint_url=endpoint)
        assert s3io.list_files(f"s3://{BUCKET}", endpoint_url=endpoint) == [uri]
        # The object really lives on that server.
        body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=BUCKET, Key="via-endpoint/rows.jsonl")
        assert body["Body"].read().decode().splitlines()[0] == json.dumps(RECORDS[0], separators=(",", ":"))
    finally:
        server.stop()
