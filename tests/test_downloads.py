"""Tests for common.downloads against a throwaway HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import io
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.downloads import DownloadError, extract_zip, failure_reason, fetch

ZIP_MEMBERS = {"data/train.csv": b"a,b\n1,2\n", "data/test.csv": b"a,b\n3,4\n", "README.txt": b"hi"}


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


ZIP_BYTES = make_zip(ZIP_MEMBERS)
ZIP_SHA = hashlib.sha256(ZIP_BYTES).hexdigest()
ZIP_MD5 = hashlib.md5(ZIP_BYTES).hexdigest()


class Handler(SimpleHTTPRequestHandler):
    """Serves files from a folder, records each request, and fakes a dropped connection."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/truncated.zip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(ZIP_BYTES)))
            self.end_headers()
            self.wfile.write(ZIP_BYTES[:20])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "data.zip").write_bytes(ZIP_BYTES)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=httpd.requests)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "cache" / "raw"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_downloads_verifies_and_then_uses_cache(server, dest):
    path = fetch(f"{server.url}/data.zip", dest, sha256=ZIP_SHA)
    assert path == dest / "data.zip"
    assert path.read_bytes() == ZIP_BYTES
    assert server.requests == ["/data.zip"]

    assert fetch(f"{server.url}/data.zip", dest, sha256=ZIP_SHA) == path
    assert fetch(f"{server.url}/data.zip", dest) == path
    assert server.requests == ["/data.zip"], "a cached file must not be downloaded again"


def test_fetch_without_hash_downloads_once(server, dest):
    path = fetch(f"{server.url}/data.zip", dest, filename="renamed.zip")
    assert path == dest / "renamed.zip"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ZIP_SHA
    fetch(f"{server.url}/data.zip", dest, filename="renamed.zip")
    assert server.requests == ["/data.zip"]


def test_filename_comes_from_url_path_not_query(server, dest):
    assert fetch(f"{server.url}/data.zip?download=1", dest) == dest / "data.zip"


def test_stale_cached_file_is_downloaded_again(server, dest):
    dest.mkdir(parents=True)
    (dest / "data.zip").write_bytes(b"an older version")
    path = fetch(f"{server.url}/data.zip", dest, sha256=ZIP_SHA)
    assert path.read_bytes() == ZIP_BYTES
    assert server.requests == ["/data.zip"]


def test_checksum_mismatch_raises_and_leaves_no_file(server, dest):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ValueError) as info:
        fetch(f"{server.url}/data.zip", dest, sha256=wrong)
    message = str(info.value)
    assert "data.zip" in message and wrong in message and ZIP_SHA in message
    assert list(dest.iterdir()) == []


def test_malformed_sha256_is_rejected_before_downloading(server, dest):
    with pytest.raises(ValueError, match="64 hex digits"):
        fetch(f"{server.url}/data.zip", dest, sha256="md5:abc")
    assert server.requests == []


def test_unreachable_host_explains_how_to_work_offline(dest):
    url = f"http://127.0.0.1:{closed_port()}/x.zip"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, sha256=ZIP_SHA, what="the landmark images")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "could not download the landmark images" in message and url in message
    assert f"place x.zip (sha256 {ZIP_SHA}) in {dest}/" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not (dest / "x.zip").exists()


def test_http_404_raises_download_error(server, dest):
    with pytest.raises(DownloadError, match=r"(?s)404.*place missing\.csv in .*raw/"):
        fetch(f"{server.url}/missing.csv", dest)
    assert list(dest.iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(server, dest):
    with pytest.raises(DownloadError, match="truncated.zip"):
        fetch(f"{server.url}/truncated.zip", dest)
    assert server.requests == ["/truncated.zip"]
    assert list(dest.iterdir()) == []


def test_fetch_verifies_an_md5_and_then_uses_cache(server, dest):
    path = fetch(f"{server.url}/data.zip", dest, md5=ZIP_MD5)
    assert path == dest / "data.zip" and path.read_bytes() == ZIP_BYTES
    assert fetch(f"{server.url}/data.zip", dest, md5=ZIP_MD5.upper()) == path
    assert server.requests == ["/data.zip"]


def test_md5_mismatch_raises_and_leaves_no_file(server, dest):
    dest.mkdir(parents=True)
    (dest / "data.zip").write_bytes(b"an older version")  # a stale cached file goes too
    wrong = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(ValueError) as info:
        fetch(f"{server.url}/data.zip", dest, md5=wrong)
    message = str(info.value)
    assert "data.zip" in message and wrong in message and ZIP_MD5 in message
    assert server.requests == ["/data.zip"]
    assert list(dest.iterdir()) == []


def test_malformed_or_doubled_md5_is_rejected_before_downloading(server, dest):
    with pytest.raises(ValueError, match="md5 .* must be 32 hex digits"):
        fetch(f"{server.url}/data.zip", dest, md5=ZIP_SHA)
    with pytest.raises(ValueError, match="md5 .* must be 32 hex digits"):
        fetch(f"{server.url}/data.zip", dest, md5=f"md5:{ZIP_MD5}")
    with pytest.raises(ValueError, match="not both"):
        fetch(f"{server.url}/data.zip", dest, sha256=ZIP_SHA, md5=ZIP_MD5)
    assert server.requests == []


def test_unreachable_host_names_the_md5_to_place_offline(dest):
    with pytest.raises(DownloadError, match=rf"place x\.zip \(md5 {ZIP_MD5}\) in "):
        fetch(f"http://127.0.0.1:{closed_port()}/x.zip", dest, md5=ZIP_MD5)


def test_extract_zip_all_or_selected_members(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(ZIP_BYTES)

    everything = extract_zip(archive, tmp_path / "all")
    assert {p.relative_to(tmp_path / "all").as_posix(): p.read_bytes() for p in everything} == ZIP_MEMBERS

    only = extract_zip(archive, tmp_path / "some", members=["data/train.csv"])
    assert only == [tmp_path / "some" / "data" / "train.csv"]
    assert sorted(p.name for p in (tmp_path / "some").rglob("*") if p.is_file()) == ["train.csv"]

    with pytest.raises(FileNotFoundError, match=r"data\.zip has no member.*nope\.csv"):
        extract_zip(archive, tmp_path / "x", members=["nope.csv"])


def test_extract_zip_keeps_members_inside_dest(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"../escape.txt": b"x"}))
    (extracted,) = extract_zip(archive, tmp_path / "out")
    assert Path(tmp_path / "out") in extracted.parents
    assert not (tmp_path / "escape.txt").exists()


def test_failure_reason_gives_each_mirrors_reason_not_the_empty_headline():
    """torchvision's message is a headline ("Error downloading FILE:") and then each mirror's reason."""
    err = RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                       "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
                       "<urlopen error [Errno -2] Name or service not known>\n"
                       "Tried http://yann.lecun.com/exdb/mnist/, got:\n"
                       "<urlopen error [Errno -2] Name or service not known>\n")
    assert failure_reason(err) == ("[Errno -2] Name or service not known "
                                   "(from ossci-datasets.s3.amazonaws.com, yann.lecun.com)")
    assert failure_reason(ConnectionError("refused")) == "ConnectionError: refused"
    assert failure_reason(TimeoutError()) == "TimeoutError"
