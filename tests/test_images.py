"""common.images.load_image: every image a user may hand a predictor, and every bad one."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.images import ImageError, load_image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_sources_path_bytes_file_pil_and_array_agree(tmp_path):
    image = Image.new("RGB", (8, 6), (200, 10, 30))
    path = tmp_path / "x.png"
    image.save(path)
    expected = np.asarray(image)
    for source in (path, str(path), png_bytes(image), io.BytesIO(png_bytes(image)), image, expected):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), expected), type(source)


def test_transparency_is_composited_on_white_not_black():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(rgba)).min() == 255
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(png_bytes(palette))).min() == 255
    assert load_image(Image.new("LA", (3, 3), (0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    sixteen = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert load_image(png_bytes(sixteen), mode="L").getpixel((0, 0)) == 128
    assert load_image(np.full((2, 2), 65535, dtype=np.uint16), mode="L").getpixel((0, 0)) == 255


def test_cmyk_jpeg_and_grayscale_convert_to_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    red = load_image(png_bytes(cmyk, "JPEG")).getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert load_image(Image.new("L", (3, 3), 77)).getpixel((1, 1)) == (77, 77, 77)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright = load_image(png_bytes(image, "JPEG", exif=exif))
    assert upright.size == (20, 40)


def test_float_arrays_in_unit_range_and_channel_last_shapes():
    assert load_image(np.ones((3, 3)), mode="L").getpixel((0, 0)) == 255
    assert load_image(np.zeros((3, 3, 1), dtype=np.uint8), mode="L").size == (3, 3)
    assert load_image(np.zeros((2, 2, 4), dtype=np.uint8)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("source, message", [
    (b"", "0 bytes"),
    (b"GIF89a but not really", "not an image"),
    (np.zeros((2, 2, 5)), "H x W"),
    (np.zeros((0, 4)), "empty"),
    (np.array([[np.nan]]), "NaN"),
    (np.array([[300.0, -1.0]]), r"\[0, 1\] or \[0, 255\]"),
    (12345, "expected a path"),
])
def test_bad_inputs_raise_image_errors(source, message):
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_file_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png_bytes(Image.effect_noise((64, 64), 50))[:300])
    for path, message in ((tmp_path / "missing.png", "no such file"), (empty, "empty"), (truncated, "cannot decode")):
        with pytest.raises(ImageError, match=message) as caught:
            load_image(path)
        assert str(path) in str(caught.value)
    with pytest.raises(ImageError, match="upload.bin"):
        load_image(b"xx", name="upload.bin")


def test_pixel_limit_is_checked_before_decoding():
    big = png_bytes(Image.new("1", (5000, 4000)))  # 20 MP, tiny on disk
    with pytest.raises(ImageError, match="too large"):
        load_image(big, max_pixels=10_000_000)
    assert load_image(big, max_pixels=25_000_000, mode="L").size == (5000, 4000)


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="mode"):
        load_image(Image.new("RGB", (1, 1)), mode="CMYK")


def test_a_jpeg_cut_inside_its_header_is_named(tmp_path):
    import io as _io

    from PIL import Image as _Image

    from common.images import ImageError, load_image

    buffer = _io.BytesIO()
    _Image.new("RGB", (64, 48), "red").save(buffer, "JPEG", exif=_Image.Exif())
    for cut in (3, 12, 40, 100):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(buffer.getvalue()[:cut])
        with pytest.raises(ImageError, match=f"cut{cut}.jpg"):
            load_image(path)
