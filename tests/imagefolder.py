"""Build a small image folder with good and bad files of every kind the issue lists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def _pattern(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def bomb_png(side: int) -> bytes:
    """A valid grayscale PNG of side × side black pixels, a few hundred KB compressed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x00" * side  # filter byte + pixels
    comp = zlib.compressobj(9)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))


def build_image_folder(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return ({good path: class}, {bad path: expected reason fragment})."""
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    for ci, cls in enumerate(("cat", "dog", "ñandú")):
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(3):
            p = folder / f"rgb_{i}.png"
            Image.fromarray(_pattern(20 + i, ci * 10 + i)).save(p)
            good[str(p)] = cls
        p = folder / "gray.jpg"
        Image.fromarray(_pattern(16, ci)[:, :, 0], mode="L").save(p, quality=95)
        good[str(p)] = cls
    dog = root / "dog"
    cat = root / "cat"
    # CMYK JPEG, RGBA PNG, palette GIF, 16-bit grayscale PNG, unicode file name
    p = cat / "cmyk.jpg"
    Image.fromarray(_pattern(24, 99)).convert("CMYK").save(p)
    good[str(p)] = "cat"
    rgba = np.dstack([_pattern(18, 5), np.full((18, 18), 128, np.uint8)])
    p = cat / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    good[str(p)] = "cat"
    p = dog / "palette.gif"
    Image.fromarray(_pattern(12, 7)).convert("P").save(p)
    good[str(p)] = "dog"
    p = dog / "deep16.png"
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(p)
    good[str(p)] = "dog"
    p = dog / "日本語 ファイル.png"
    Image.fromarray(_pattern(14, 3)).save(p)
    good[str(p)] = "dog"
    # an animated GIF (its first frame is used) and an EXIF-rotated JPEG
    p = dog / "animated.gif"
    frames = [Image.fromarray(_pattern(12, s)).convert("P") for s in (21, 22)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, loop=0)
    good[str(p)] = "dog"
    p = cat / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_pattern(20, 23)[:10]).save(p, exif=exif)
    good[str(p)] = "cat"
    # bad ones
    p = dog / "bomb.png"
    p.write_bytes(bomb_png(30000))
    bad[str(p)] = "too large"
    p = cat / "corrupt.png"
    full = cat / "rgb_0.png"
    p.write_bytes(full.read_bytes()[:60])
    bad[str(p)] = "corrupt"
    p = cat / "empty.jpg"
    p.write_bytes(b"")
    bad[str(p)] = "empty"
    p = dog / "notes.txt"
    p.write_text("not an image at all\n")
    bad[str(p)] = "not an image"
    p = dog / "broken_link.png"
    os.symlink(root / "does-not-exist.png", p)
    bad[str(p)] = "unreadable"
    return good, bad
