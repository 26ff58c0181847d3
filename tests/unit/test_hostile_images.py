"""Photo-sized and hostile inputs: decompression bombs, EXIF orientation, animated files,
multi-megapixel JPEGs decoded in draft mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sparkvision.data.images import ImageRejected, ImageSpec, decode_image, encoded_to_array
from tests.imagefolder import bomb_png


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decompression_bomb_is_rejected_not_raised():
    data = bomb_png(30000)  # 900 megapixels, Pillow's DecompressionBombError territory
    assert len(data) < 2_000_000
    with pytest.raises(ImageRejected, match=r"too large \(900000000 pixels\)"):
        decode_image(data)


def test_exif_orientation_is_applied():
    # A 2x4 image (wide): left half black, right half white; tagged "rotate 90° CW".
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer rotates 90° clockwise
    data = _encode(Image.fromarray(arr, "L"), "PNG", exif=exif)
    img = decode_image(data)
    assert img.size == (20, 40)  # width, height: now tall
    out = encoded_to_array(data, ImageSpec(40, 20, 1))[:, :, 0]
    assert out[:18].mean() < 10 and out[22:].mean() > 245  # black on top after the rotation


def test_animated_gif_and_webp_use_the_first_frame():
    frames = [Image.new("L", (16, 16), color=c) for c in (10, 200, 90)]
    for fmt in ("GIF", "WEBP"):
        data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50,
                       loop=0, **({"lossless": True} if fmt == "WEBP" else {}))
        out = encoded_to_array(data, ImageSpec(16, 16, 1))
        assert abs(int(out.mean()) - 10) <= 2, (fmt, out.mean())


def test_photo_sized_jpeg_is_decoded_in_draft_mode():
    """A 4000x3000 JPEG → 32x32: Pillow's DCT scaling decodes at 1/8 size first; the result
    matches a full decode + resize closely."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small, "RGB").resize((4000, 3000), Image.Resampling.BILINEAR)
    data = _encode(big, "JPEG", quality=90)
    spec = ImageSpec(32, 32, 3)
    fast = encoded_to_array(data, spec)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
        (32, 32), Image.Resampling.BILINEAR))
    assert fast.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 6
    img = decode_image(data, draft=(32, 32), channels=3)
    assert img.size == (500, 375)  # the 1/8 scale: still ≥ the target in both sides


def test_stored_images_raw_png_and_jpeg():
    from sparkvision.data.images import encode_array, stored_to_array

    rng = np.random.default_rng(1)
    for shape in ((5, 7, 1), (5, 7, 3)):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(stored_to_array(arr.tobytes(), shape), arr)
        assert np.array_equal(stored_to_array(encode_array(arr, "png"), shape), arr)
        smooth = np.full(shape, 120, np.uint8)
        assert np.abs(stored_to_array(encode_array(smooth, "jpeg"), shape).astype(int)
                      - 120).max() <= 3
    with pytest.raises(ValueError, match="is 7x5, not 5x5"):
        stored_to_array(encode_array(arr, "png"), (5, 5, 3))
    with pytest.raises(ValueError, match="neither 5x7x3 raw pixels nor a readable PNG"):
        stored_to_array(b"\x00" * 10, (5, 7, 3))
