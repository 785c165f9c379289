"""Data staging (CIFAR-100 extraction on a tiny generated tarball, .lst files, stand-in, upload); monitoring helpers."""
from __future__ import annotations

import functools
import io
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from common.downloads import DownloadError
from scones_workflow.src import data
from scones_workflow.src.data import cifar, lst, stand_in
from scones_workflow.src.monitoring import monitor
from tests.scones_fixtures import cifar_batch


def write_cifar_tarball(path, train, test):
    with tarfile.open(path, "w:gz") as archive:
        for name, batch in (("train", train), ("test", test)):
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_cifar_tarball_becomes_pngs_and_lst_files_of_the_two_classes(tmp_path):
    tarball = write_cifar_tarball(tmp_path / "cifar.tar.gz", cifar_batch(12, [8, 3, 48, 8]), cifar_batch(6, [48, 1]))
    cifar.cifar_to_scones(tarball, tmp_path / "scones")
    staged = data.open_folder(tmp_path / "scones", "fixture", stand_in=False)
    assert len(staged.train) == 9 and len(staged.test) == 3  # fine labels 8 and 48 only
    assert set(staged.train["label"]) == {0, 1} and set(staged.test["class_name"]) == {"motorcycle"}
    first = (tmp_path / "scones" / "train.lst").read_text().splitlines()[0]
    assert first == "0\t0\timg_000.png"  # CIFAR's index, label, CIFAR's file name
    images, labels = data.load_arrays(staged, "train")
    assert images.shape == (9, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist()[:3] == [0, 1, 0]


def test_a_tarball_without_the_python_batches_is_named(tmp_path):
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    with pytest.raises(ValueError, match="no member cifar-100-python/train"):
        cifar.cifar_to_scones(path, tmp_path / "out")


def test_download_checks_the_md5(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "cifar-100-python.tar.gz").write_bytes(b"not the real file")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(cifar, "CIFAR_URL", f"http://127.0.0.1:{httpd.server_address[1]}/cifar-100-python.tar.gz")
    try:
        with pytest.raises(ValueError, match="checksum mismatch .* expected md5:eb9058c3a382ffc7106e4002c42a8d85"):
            cifar.download_cifar(tmp_path / "raw")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (tmp_path / "raw" / "cifar-100-python.tar.gz").exists()


def test_offline_staging_falls_back_to_a_labelled_stand_in(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise DownloadError("no network")

    monkeypatch.setattr(cifar, "fetch", offline)
    staged = data.stage(tmp_path)
    assert staged.stand_in and "generated" in staged.source and staged.root == tmp_path / "scones_stand_in"
    assert staged.train["label"].value_counts().tolist() == [100, 100] and len(staged.test) == 60


def test_staged_folder_is_preferred_and_checked(tmp_path):
    stand_in.generate_stand_in(tmp_path / "scones", n_train=4, n_test=2)
    staged = data.stage(tmp_path, download=False)
    assert not staged.stand_in and len(staged.train) == 4
    (tmp_path / "scones" / staged.test["file"].iloc[0]).unlink()
    with pytest.raises(FileNotFoundError, match="test.lst lists 1 missing image"):
        data.stage(tmp_path, download=False)


def test_read_lst_names_the_bad_line(tmp_path):
    path = tmp_path / "train.lst"
    path.write_text("0\t0\ta.png\n1\t2\tb.png\n")
    with pytest.raises(ValueError, match=r"train.lst, line 2: expected 'index<TAB>0\|1<TAB>file'"):
        lst.read_lst(path)


def test_upload_copies_the_layout_to_s3(tmp_path):
    stand_in.generate_stand_in(tmp_path / "scones", n_train=2, n_test=2)
    staged = data.stage(tmp_path, download=False)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="scones-bucket")
        uploaded = data.upload(staged, "s3://scones-bucket/scones")
    assert "s3://scones-bucket/scones/train.lst" in uploaded and len(uploaded) == 6


def _captures(labels, times):
    return pd.DataFrame({"inference_time": pd.to_datetime(times, utc=True), "predicted_label": labels,
                         "confidence": 0.99, "inference_id": [f"img{i}.png" for i in range(len(labels))]})


def test_drift_check_flags_a_shift_in_the_class_mix():
    times = pd.date_range("2026-01-01", periods=200, freq="min")
    steady, p_steady = monitor.class_share_drift(_captures(["bicycle", "motorcycle"] * 100, times))
    shifted, p_shifted = monitor.class_share_drift(_captures(["bicycle"] * 100 + ["motorcycle"] * 100, times))
    assert p_steady > 0.5 and p_shifted < 1e-6
    assert shifted.set_index("class").loc["bicycle", "earlier share"] == 1.0


def test_labels_from_file_names_give_accuracy():
    frame = monitor.attach_labels(_captures(["bicycle", "motorcycle", "bicycle"], ["2026-01-01"] * 3),
                                  {"img0.png": 0, "img1.png": 0})
    assert frame["true_label"].tolist() == ["bicycle", "bicycle", None]
    assert monitor.accuracy(frame) == (0.5, 2)
