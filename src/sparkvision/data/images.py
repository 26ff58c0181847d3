"""Decode, validate, convert and resize images with Pillow and NumPy.

Everything here is plain Python (no Spark) so it runs inside executors and in unit tests.
Images are stored as uint8 arrays in HWC order.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # libjpeg-turbo with DCT scaling to the target size: ~3x Pillow on small JPEGs
    import simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel: Pillow only
    simplejpeg = None

# Refuse decompression bombs instead of using all executor memory.
MAX_PIXELS = 64 * 1024 * 1024

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageRejected(Exception):
    """An input file cannot be used as an image; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class ImageSpec:
    """Target shape of prepared images: ``channels`` is 1 (grayscale) or 3 (RGB)."""

    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer and float images to 8-bit grayscale."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    else:
        arr = arr.astype(np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        scaled = arr * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode (CMYK, RGBA, LA, P, 1, I;16, ...) to L or RGB."""
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def decode_image(data: bytes, name: str = "<bytes>", draft: tuple[int, int] | None = None,
                 channels: int | None = None) -> Image.Image:
    """Decode encoded image bytes, raising :class:`ImageRejected` with a reason.

    Larger than ``MAX_PIXELS`` (a decompression bomb included) is rejected before any pixel
    is decoded; the EXIF orientation is applied; an animated file gives its first frame.
    ``draft=(width, height)``: a JPEG much larger than that is decoded at a reduced scale
    (Pillow's DCT scaling; still at least that size), which makes photos cheap."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageRejected(f"image too large ({img.width}x{img.height})")
            if draft is not None and img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", draft)
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses before we can look
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageRejected(
            f"image too large ({size.group(1) + ' pixels' if size else exc}): a "
            "decompression bomb or a huge scan; resize it before preparing") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"corrupt image: {exc}") from None
    if img.width < 1 or img.height < 1:
        raise ImageRejected("image has no pixels")
    return img


def resize(img: Image.Image, height: int, width: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BILINEAR)


def prepare_image(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Convert and resize a decoded image to a uint8 HWC array of ``spec.shape``."""
    img = resize(to_mode(img, spec.channels), spec.height, spec.width)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def prepare_array(arr: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Like :func:`prepare_image` for an in-memory uint8 array (HW or HWC)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    mode = "L" if arr.ndim == 2 else "RGB"
    return prepare_image(Image.fromarray(arr.astype(np.uint8), mode=mode), spec)


#: How far into a JPEG an EXIF block (which may rotate the image) is looked for.
_EXIF_WINDOW = 64 * 1024


def _fast_jpeg(data: bytes, spec: ImageSpec) -> np.ndarray | None:
    """A plain baseline/progressive YCbCr or grayscale JPEG without EXIF, decoded by
    libjpeg-turbo (simplejpeg) at the smallest DCT scale still at least the target size and
    resized by Pillow; None for anything else (CMYK, EXIF orientation, corrupt or truncated
    data, too large), which :func:`decode_image` handles and rejects with its reason.

    Pixels differ from Pillow's own decode by the DCT scale libjpeg picks (Pillow's draft
    mode only halves): mean absolute difference < 2 grey levels (tests/unit/test_images.py).
    """
    if simplejpeg is None or not data.startswith(b"\xff\xd8") or b"Exif" in data[:_EXIF_WINDOW]:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or height * width > MAX_PIXELS:
            return None
        arr = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if spec.channels == 1 else "RGB",
            min_height=spec.height, min_width=spec.width)
    except ValueError:  # strict: corrupt or truncated data also lands here
        return None
    if arr.shape[:2] != (spec.height, spec.width):
        img = Image.fromarray(arr[:, :, 0] if spec.channels == 1 else arr,
                              mode="L" if spec.channels == 1 else "RGB")
        arr = np.asarray(resize(img, spec.height, spec.width), dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def encoded_to_array(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Decode + convert + resize in one call; raises :class:`ImageRejected`."""
    fast = _fast_jpeg(data, spec)
    if fast is not None:
        return fast
    return prepare_image(decode_image(data, draft=(spec.width, spec.height),
                                      channels=spec.channels), spec)


#: How ``prepare --store encoded`` may encode images: PNG (lossless) or JPEG (quality 95).
ENCODINGS = ("png", "jpeg")
JPEG_QUALITY = 95


def encode_array(arr: np.ndarray, encoding: str) -> bytes:
    """A uint8 HWC array (C 1 or 3) as PNG or JPEG bytes."""
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr,
                          mode="L" if arr.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def stored_to_array(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """A stored image as a uint8 HWC array of ``shape``: raw pixels (exactly H·W·C bytes)
    as they are, anything else decoded (``prepare --store encoded``). ValueError when it is
    neither."""
    h, w, c = shape
    if len(data) == h * w * c:
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != (w, h):
                raise ValueError(f"an encoded image is {img.width}x{img.height}, not {w}x{h}")
            arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"an image has {len(data)} bytes: neither {h}x{w}x{c} raw pixels nor "
                         f"a readable PNG/JPEG ({exc})") from None
    return arr.reshape(h, w, c)
