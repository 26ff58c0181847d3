from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sparkvision.data.images import ImageRejected, ImageSpec, decode_image, encoded_to_array
from sparkvision.data.prepare import parse_image_size, parse_split
from sparkvision.data.splitting import split_counts
from sparkvision.errors import InvalidParameterError


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    out = encoded_to_array(_encode(Image.fromarray(arr), "PNG"), ImageSpec(2, 2, 1))
    assert out.shape == (2, 2, 1)
    assert out[:, :, 0].tolist() == [[0, 128], [255, 4]]


def test_rgba_is_composited_on_white_and_cmyk_becomes_rgb():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = encoded_to_array(_encode(rgba, "PNG"), ImageSpec(4, 4, 3))
    assert out.shape == (4, 4, 3) and out.min() == 255
    cmyk = Image.new("CMYK", (5, 3), (0, 255, 255, 0))  # pure red in CMYK
    out = encoded_to_array(_encode(cmyk, "JPEG"), ImageSpec(3, 5, 3))
    assert out.shape == (3, 5, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_palette_and_resize_to_grayscale():
    img = Image.new("P", (10, 20))
    out = encoded_to_array(_encode(img, "GIF"), ImageSpec(7, 9, 1))
    assert out.shape == (7, 9, 1) and out.dtype == np.uint8


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello world", "not an image"),
        (_encode(Image.new("RGB", (20, 20), (1, 2, 3)), "PNG")[:60], "corrupt"),
    ],
)
def test_bad_bytes_are_rejected_with_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_image(data)


def test_parse_split_and_size():
    assert parse_split("0.7, 0.2,0.1") == (0.7, 0.2, 0.1)
    for bad in ("0.8,0.1", "a,b,c", "0.5,0.5,0.5", "-0.1,0.6,0.5"):
        with pytest.raises(InvalidParameterError, match="split"):
            parse_split(bad)
    assert parse_image_size("28") == (28, 28)
    assert parse_image_size("32x24") == (32, 24)
    with pytest.raises(InvalidParameterError, match="image-size"):
        parse_image_size("0")


@pytest.mark.parametrize("n", [3, 4, 5, 10, 17, 100, 1000])
def test_split_counts_keep_every_split_populated(n):
    tr, va, te = split_counts(n, (0.8, 0.1, 0.1))
    assert tr + va + te == n
    assert min(tr, va, te) >= 1
    assert abs(va - n * 0.1) <= 1 and abs(te - n * 0.1) <= 1


def _photo_jpeg(side: int, seed: int, mode: str = "RGB", **save) -> bytes:
    """A smooth (photo-like) JPEG: a colour gradient with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    rgb = np.stack([xx * 255 // side, yy * 255 // side, (xx + yy) * 127 // side], -1)
    rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").convert(mode).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _pillow_reference(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Pillow's full decode + bilinear resize (what the fast path replaces)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if spec.channels == 1 else "RGB").resize(
            (spec.width, spec.height), Image.Resampling.BILINEAR)
        arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


@pytest.mark.parametrize("side, spec", [(96, ImageSpec(32, 32, 3)), (200, ImageSpec(64, 48, 3)),
                                        (96, ImageSpec(32, 32, 1)), (40, ImageSpec(64, 64, 3))])
def test_fast_jpeg_decode_matches_pillow_within_two_grey_levels(side, spec):
    from sparkvision.data import images

    data = _photo_jpeg(side, side)
    fast = images._fast_jpeg(data, spec)
    assert fast is not None and fast.shape == spec.shape and fast.dtype == np.uint8
    assert np.array_equal(encoded_to_array(data, spec), fast)  # the path prepare takes
    diff = np.abs(fast.astype(int) - _pillow_reference(data, spec).astype(int))
    assert diff.mean() < 2.0, diff.mean()


def test_jpegs_the_fast_path_cannot_take_go_through_pillow():
    from sparkvision.data import images

    spec = ImageSpec(16, 16, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: only Pillow applies the EXIF orientation
    rotated = _photo_jpeg(32, 1, exif=exif)
    cmyk = _photo_jpeg(32, 2, mode="CMYK")
    truncated = _photo_jpeg(64, 3)[:400]
    assert images._fast_jpeg(rotated, spec) is None
    assert images._fast_jpeg(cmyk, spec) is None
    assert images._fast_jpeg(truncated, spec) is None
    assert encoded_to_array(rotated, spec).shape == spec.shape
    assert encoded_to_array(cmyk, spec).shape == spec.shape
    with pytest.raises(ImageRejected, match="corrupt"):
        encoded_to_array(truncated, spec)
