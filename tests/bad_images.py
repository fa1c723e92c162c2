"""A corpus of broken and odd image files mixed into real photos (for the bad-data tests)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 10_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (100 M by default, above PIL's 89 M limit) in ~15 kB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row * 500) for _ in range(side // 500)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())
    return path


def make_corpus(root: Path, real_photos: Path, num_real: int) -> tuple[list[Path], list[Path], list[Path]]:
    """ImageFolder `root/{real,odd}/`: `num_real` real photos, then files that must be
    converted (CMYK, 16-bit, palette, alpha, wrong extension, smaller than the crop) and files
    that must be skipped (truncated, zero-byte, not an image, decompression bomb, 1x1, 3x2).

    Returns (real, convertible, bad) paths.
    """
    real_dir, odd = root / "real", root / "odd"
    real_dir.mkdir(parents=True)
    odd.mkdir(parents=True)
    sources = sorted((real_photos / "train" / "n01440764").iterdir())
    real = [Path(shutil.copy(f, real_dir / f.name)) for f in sources[:num_real]]
    photo = Image.open(sources[-1]).convert("RGB")
    small = photo.resize((40, 30))
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    palette_alpha = small.convert("P")
    palette_alpha.info["transparency"] = 0
    convertible = [
        _save(photo.convert("CMYK"), odd / "cmyk.jpg", "JPEG"),
        _save(Image.fromarray(grey16), odd / "grey16.png", "PNG"),
        _save(small.convert("P"), odd / "palette.png", "PNG"),
        _save(palette_alpha, odd / "palette_alpha.png", "PNG", transparency=0),
        _save(small.convert("RGBA"), odd / "rgba.png", "PNG"),
        _save(small.convert("LA"), odd / "la.png", "PNG"),
        _save(small, odd / "jpeg_named.png", "JPEG"),  # content decides, not the extension
        _save(photo.resize((20, 12)), odd / "smaller_than_crop.png", "PNG"),
        _save(photo, odd / "progressive.jpg", "JPEG", progressive=True),
    ]
    full = sources[-2].read_bytes()
    bad = [odd / "truncated.jpg", odd / "zero.jpg", odd / "text.jpg", odd / "bomb.png",
           odd / "one_by_one.png", odd / "three_by_two.png"]
    bad[0].write_bytes(full[: len(full) // 3])
    bad[1].write_bytes(b"")
    bad[2].write_bytes(b"this is a README saved with a .jpg name\n" * 20)
    bad[3].write_bytes(bomb_png())
    _save(photo.resize((1, 1)), bad[4], "PNG")
    _save(photo.resize((3, 2)), bad[5], "PNG")
    return real, convertible, bad
