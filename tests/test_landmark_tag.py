"""The bulk tagger (issue 24): the JSONL schema, batching, bad files, EXIF GPS, resume after kill -9,
the lock, S3 prefixes through moto. A tiny exported predictor; generated photos; no network."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws
from PIL import Image

from landmark_classifier.src import export, predictor, tag
from tests.landmark_fixtures import tiny_dataset, tiny_export, tiny_predictor  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PHOTO_KEYS = {"file", "landmark", "confidence", "top", "gps", "source", "version"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _photos(tiny_dataset) -> list[Path]:  # noqa: F811
    return sorted((tiny_dataset.root / "test").rglob("*.jpg"))


@pytest.fixture
def library(tmp_path, tiny_dataset) -> Path:  # noqa: F811
    """The tiny test photos in nested folders, with a hidden file and a note the walk must skip."""
    root = tmp_path / "library"
    for photo in _photos(tiny_dataset):
        target = root / photo.parent.name / "nested" / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    (root / "notes.txt").write_text("not a photo")
    (root / ".hidden.jpg").write_bytes(b"x")
    return root


def _gps_jpeg(path: Path, latitude: tuple, lat_ref: str, longitude: tuple, lon_ref: str) -> Path:
    """A JPEG with an EXIF GPS block (degrees, minutes, seconds as rationals + N/S/E/W refs)."""
    exif = Image.Exif()
    exif.get_ifd(tag.GPS_IFD).update({1: lat_ref, 2: latitude, 3: lon_ref, 4: longitude})
    Image.new("RGB", (120, 90), (90, 140, 200)).save(path, exif=exif.tobytes())
    return path


def test_every_photo_gets_the_predictors_json_line(library, tiny_predictor, tmp_path, capsys):  # noqa: F811
    model_path, _ = tiny_predictor
    out = tmp_path / "tags.jsonl"
    assert tag.main([str(library), "--out", str(out), "--model", str(model_path), "--batch", "3", "-k", "2",
                     "--quiet", "--summary-json", str(tmp_path / "summary.json")]) == 0
    lines = _lines(out)
    photos = sorted(library.rglob("*/nested/*.jpg"))
    assert [line["file"] for line in lines] == [str(p) for p in photos]  # no notes.txt, no hidden file
    served = predictor.load(model_path)
    shown = dict(zip(served.class_names, predictor.display_names(served)))
    for line, photo in zip(lines, photos):
        assert set(line) == PHOTO_KEYS and line["gps"] is None and line["source"] == "model"
        stat = photo.stat()
        assert line["version"] == f"{stat.st_size}:{stat.st_mtime_ns}"
        # --onnx-batch 1 (the default): each photo at its own size, exactly the one-file CLI's answer
        expected = predictor.predict(served, photo, k=2).as_json(str(photo), shown)
        assert {key: line[key] for key in expected} == expected
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["photos"] == len(photos) and summary["errors"] == {}
    assert sum(summary["per_landmark"].values()) == len(photos)
    assert summary["this_run"]["lines"] == len(photos)
    assert "photos tagged" in capsys.readouterr().err


def test_batches_of_one_size_agree_with_the_one_file_predictor(library, tiny_predictor, tmp_path):  # noqa: F811
    model_path, _ = tiny_predictor
    out = tmp_path / "tags.jsonl"
    big = Image.open(next(library.rglob("nested/*.jpg"))).resize((1001, 613))  # draft-mode sized, odd crop offsets
    big.save(library / "big.jpg", quality=90)
    assert tag.main([str(library), "--out", str(out), "--model", str(model_path), "--onnx-batch", "3", "--batch", "4",
                     "--quiet"]) == 0
    served = predictor.load(model_path)
    lines = _lines(out)
    assert len(lines) == len(list(library.rglob("*.jpg"))) - 1  # the hidden one skipped
    for line in lines:
        expected = predictor.predict(served, line["file"], k=5)
        assert [name for name, _ in line["top"]][:1] == [predictor.display_names(served)[
            served.class_names.index(expected.top[0][0])]]
        assert line["confidence"] == pytest.approx(expected.confidence, abs=0.02)


def test_square_window_holds_the_graphs_centre_crop():
    image = Image.new("RGB", (1001, 613))
    window = tag.square_window(image, 73, 64)
    assert window.size == (73, 73)
    assert export.resized_size(613, 1001, 73) == (73, round(1001 * 73 / 613))
    assert tag.resized_size is export.resized_size  # the graph's own arithmetic, not a copy


@pytest.fixture(scope="module")
def never_known(tmp_path_factory, tiny_dataset) -> Path:  # noqa: F811
    """A predictor whose open-set threshold no photo reaches: every photo is 'no known landmark'."""
    torch.manual_seed(0)
    from torch import nn

    from common.transfer import Classifier
    model = Classifier(nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU()),
                       nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 3)).eval()
    card = export.ModelCard(tiny_dataset.class_names, "toy", {}, tiny_dataset.display_names)
    return export.export_predictor(model, export.Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3), card,
                                   tmp_path_factory.mktemp("never"), rule=export.OpenSetRule("msp", 1.0, 2.0)).onnx_path


def test_no_known_landmark_is_null_and_counted(library, never_known, tmp_path):
    out = tmp_path / "tags.jsonl"
    summary = tag.run([str(library)], tag.TagConfig(out, never_known, batch=4, progress=False))
    lines = _lines(out)
    assert lines and all(line["landmark"] is None and len(line["top"]) == 3 for line in lines)
    assert summary.as_dict()["share_no_known_landmark"] == 1.0
    assert summary.landmarks == {predictor.NO_LANDMARK: len(lines)}


def test_unreadable_files_get_error_lines_and_the_run_goes_on(library, tiny_predictor, tmp_path):  # noqa: F811
    model_path, _ = tiny_predictor
    good = next(library.rglob("nested/*.jpg"))
    (library / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (library / "fake.png").write_bytes(b"this is no image at all")
    (library / "empty.jpg").write_bytes(b"")
    text = tmp_path / "explicit.txt"
    text.write_text("named on the command line, so tried")
    out = tmp_path / "tags.jsonl"
    summary = tag.run([str(library), str(text), str(tmp_path / "gone.jpg")],
                      tag.TagConfig(out, model_path, batch=2, progress=False))
    lines = {Path(line["file"]).name: line for line in _lines(out)}
    kinds = {name: lines[name].get("kind") for name in
             ("truncated.jpg", "fake.png", "empty.jpg", "explicit.txt", "gone.jpg")}
    assert kinds == {"truncated.jpg": "truncated or corrupt", "fake.png": "not an image", "empty.jpg": "empty",
                     "explicit.txt": "not an image", "gone.jpg": "missing"}
    assert all(set(lines[name]) == {"file", "error", "kind", "version"} and name in lines[name]["error"]
               for name in kinds)
    assert sum("error" not in line for line in lines.values()) == len(_photos_in(library)) - 3
    assert summary.errors == {"truncated or corrupt": 1, "not an image": 2, "empty": 1, "missing": 1}


def _photos_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".jpg", ".png") and not p.name.startswith(".")]


def test_exif_gps_locates_photos_and_others_fall_back_to_the_model(tmp_path, tiny_predictor):  # noqa: F811
    model_path, _ = tiny_predictor
    folder = tmp_path / "trip"
    folder.mkdir()
    # the Eiffel Tower, 48 deg 51' 29.6" N, 2 deg 17' 40.2" E; Sydney Opera House, 33 deg 51' 31" S, 151 deg 12' 50.5" E
    _gps_jpeg(folder / "paris.jpg", (48.0, 51.0, 29.6), "N", (2.0, 17.0, 40.2), "E")
    _gps_jpeg(folder / "sydney.jpg", (33.0, 51.0, 31.0), "S", (151.0, 12.0, 50.5), "E")
    _gps_jpeg(folder / "nofix.jpg", (0.0, 0.0, 0.0), "N", (200.0, 0.0, 0.0), "E")  # impossible: ignored
    Image.new("RGB", (120, 90), (10, 200, 30)).save(folder / "plain.jpg")
    assert tag.read_gps(Image.open(folder / "paris.jpg")) == {"latitude": 48.858222, "longitude": 2.294500}
    out = tmp_path / "tags.jsonl"
    summary = tag.run([str(folder)], tag.TagConfig(out, model_path, batch=2, progress=False))
    lines = {Path(line["file"]).stem: line for line in _lines(out)}
    assert lines["sydney"]["gps"] == {"latitude": -33.858611, "longitude": 151.214028}
    assert lines["paris"]["source"] == lines["sydney"]["source"] == "metadata"
    assert lines["plain"]["gps"] is lines["nofix"]["gps"] is None
    assert lines["plain"]["source"] == lines["nofix"]["source"] == "model"
    assert all(line["landmark"] and line["top"] for line in lines.values())  # the model tags located photos too
    assert summary.as_dict()["share_located_by_metadata"] == 0.5


def test_a_rerun_skips_what_is_tagged_and_retags_a_changed_file(library, tiny_predictor, tmp_path):  # noqa: F811
    model_path, _ = tiny_predictor
    out = tmp_path / "tags.jsonl"
    config = tag.TagConfig(out, model_path, batch=2, progress=False)
    first = tag.run([str(library)], config)
    changed = next(library.rglob("nested/*.jpg"))
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, quality=70)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = tag.run([str(library)], config)
    assert second.new == 1 and second.skipped == first.new - 1
    assert [line["file"] for line in _lines(out)].count(str(changed)) == 2  # the old version's line stays


def test_the_lock_stops_a_second_run(library, tiny_predictor, tmp_path, capsys):  # noqa: F811
    model_path, _ = tiny_predictor
    out = tmp_path / "tags.jsonl"
    with tag.lock(out):
        assert tag.main([str(library), "--out", str(out), "--model", str(model_path), "--quiet"]) == 2
    assert "another tagging run" in capsys.readouterr().err
    assert not out.exists()
    assert tag.main([str(library), "--out", str(out), "--model", str(model_path), "--quiet"]) == 0  # released


def test_a_half_written_last_line_is_dropped(tmp_path):
    out = tmp_path / "tags.jsonl"
    out.write_text('{"file": "a", "version": "1"}\n{"file": "b", "vers')
    assert tag.drop_partial_line(out) == len('{"file": "b", "vers')
    assert out.read_text() == '{"file": "a", "version": "1"}\n'
    assert tag.drop_partial_line(out) == 0


def test_a_broken_output_file_is_named(tmp_path):
    out = tmp_path / "tags.jsonl"
    good = json.dumps({"file": "a", "landmark": None, "confidence": 0.5, "top": [], "gps": None, "source": "model",
                       "version": "1"})
    out.write_text(f'{good}\nnot json\n{good}\n')
    with pytest.raises(ValueError, match=r"tags.jsonl, line 2"):
        tag.read_done(out, tag.Summary())


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "ctrl+c"])
def test_resume_after_a_kill_gives_exactly_one_line_per_photo(stop, tmp_path, tiny_dataset, tiny_predictor):  # noqa: F811
    model_path, _ = tiny_predictor
    folder = tmp_path / "many"
    folder.mkdir()
    photos = _photos(tiny_dataset)
    for i in range(200):  # symlinks, as a library of links would be
        (folder / f"{i:03d}.jpg").symlink_to(photos[i % len(photos)])
    out = tmp_path / "tags.jsonl"
    command = [sys.executable, "-m", "landmark_classifier.src.tag", str(folder), "--out", str(out),
               "--model", str(model_path), "--batch", "2", "--workers", "2", "--quiet"]
    rng = random.Random(int(os.environ.get("PYTEST_SEED", "0")) or None)
    target = rng.randint(1, 120)
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= target:
            break
        time.sleep(0.005)
    time.sleep(rng.random() * 0.05)
    os.kill(process.pid, stop)
    error = process.communicate(timeout=60)[1]
    assert out.read_bytes().count(b"\n") < len(list(folder.iterdir()))  # stopped mid-run, not finished
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
        with open(out, "ab") as f:  # and as if the kill had come in the middle of a write
            f.write(b'{"file": "' + str(folder / "000.jpg").encode() + b'", "landm')
    else:
        assert process.returncode == 130 and "interrupted" in error and out.read_bytes().endswith(b"\n")
    assert subprocess.run(command, cwd=REPO, stderr=subprocess.PIPE, timeout=120).returncode == 0
    lines = _lines(out)
    assert sorted(line["file"] for line in lines) == sorted(str(p) for p in folder.iterdir())
    assert all(set(line) == PHOTO_KEYS for line in lines)


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_an_s3_prefix_is_tagged_page_by_page(aws_env, tiny_dataset, tiny_predictor, tmp_path):  # noqa: F811
    model_path, _ = tiny_predictor
    photos = _photos(tiny_dataset)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="photo-library")
        for i, photo in enumerate(photos):
            s3.put_object(Bucket="photo-library", Key=f"2026/trip/{i}.jpg", Body=photo.read_bytes())
        s3.put_object(Bucket="photo-library", Key="2026/trip/broken.jpg", Body=b"no image")
        s3.put_object(Bucket="photo-library", Key="2026/trip/empty.jpg", Body=b"")
        s3.put_object(Bucket="photo-library", Key="2026/trip/index.html", Body=b"<html>")
        s3.put_object(Bucket="photo-library", Key="2025/old.jpg", Body=photos[0].read_bytes())
        out = tmp_path / "tags.jsonl"
        config = tag.TagConfig(out, model_path, batch=4, progress=False)
        summary = tag.run(["s3://photo-library/2026/"], config)
        lines = {line["file"]: line for line in _lines(out)}
        assert set(lines) == {f"s3://photo-library/2026/trip/{i}.jpg" for i in range(len(photos))} | {
            "s3://photo-library/2026/trip/broken.jpg", "s3://photo-library/2026/trip/empty.jpg"}
        etag = s3.head_object(Bucket="photo-library", Key="2026/trip/0.jpg")["ETag"].strip('"')
        assert lines["s3://photo-library/2026/trip/0.jpg"]["version"] == etag
        assert lines["s3://photo-library/2026/trip/broken.jpg"]["kind"] == "not an image"
        # a 0-byte object is "empty", as a 0-byte local file is (PIL alone would call it "not an image")
        assert lines["s3://photo-library/2026/trip/empty.jpg"]["kind"] == "empty"
        assert summary.photos == len(photos)
        assert tag.run(["s3://photo-library/2026/"], config).skipped == len(photos) + 2
        listed = list(tag.s3io.iter_objects("s3://photo-library/2026/trip/", client=s3))
        assert len(listed) == len(photos) + 3 and all(set(o) == {"uri", "size", "etag"} for o in listed)


def test_the_benchmark_times_every_row_and_the_big_library(tiny_dataset, tiny_predictor, tmp_path):  # noqa: F811
    from landmark_classifier import tag_benchmark

    model_path, _ = tiny_predictor
    out = tmp_path / "bench.json"
    assert tag_benchmark.main(["--photos-dir", str(tiny_dataset.root / "test"), "--model", str(model_path),
                               "--runs", "1", "--many", "15", "--per-process", "1", "--phone", "2", "--phone-size", "640x480",
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    photos = len(_photos(tiny_dataset))
    assert set(result["rows"]) == {"cli_loop", "cli_per_process", "tagger", "tagger_onnx_batch16", "tagger_15",
                                   "cli_loop_phone", "tagger_phone"}
    assert result["rows"]["cli_loop"]["photos"] == result["rows"]["tagger_onnx_batch16"]["photos"] == photos
    assert result["rows"]["tagger_15"]["photos"] == 15 and result["rows"]["cli_per_process"]["photos"] == 1
    assert result["rows"]["tagger_phone"]["photos"] == result["rows"]["cli_loop_phone"]["photos"] == 2
    assert all(row["photos_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in result["rows"].values())
    assert result["speedup_vs_cli_loop"]["cli_loop"] == 1.0


def test_a_missing_source_or_an_unwritable_out_is_a_clear_error(library, tiny_predictor, tmp_path, capsys):  # noqa: F811
    model_path, _ = tiny_predictor
    with pytest.raises(SystemExit):
        tag.main([str(library), str(tmp_path / "Picturs"), "--out", str(tmp_path / "t.jsonl"), "--quiet"])
    assert "no such file or folder" in capsys.readouterr().err and not (tmp_path / "t.jsonl").exists()
    (tmp_path / "folder.jsonl").mkdir()
    assert tag.main([str(library), "--out", str(tmp_path / "folder.jsonl"), "--model", str(model_path),
                     "--quiet"]) == 2
    assert "folder.jsonl" in capsys.readouterr().err
