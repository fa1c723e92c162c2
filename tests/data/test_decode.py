"""Decoding: every odd image mode becomes RGB uint8; broken input becomes None, never an exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rob_ray.data import decode as decode_mod
from rob_ray.data import decode_rgb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_greyscale_jpeg_becomes_rgb(real_photos, tmp_path):
    # A greyscale JPEG (PIL mode L), as 242 of Imagenette's files are, made from a real photo.
    photo = Image.open(sorted((real_photos / "train" / "n03394916").iterdir())[0])
    path = tmp_path / "grey.jpg"
    photo.convert("L").save(path, "JPEG", quality=75)
    assert Image.open(path).mode == "L"
    arr = decode_rgb(path.read_bytes())
    assert arr.shape == (*photo.size[::-1], 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    # Real content, not a constant fill.
    assert arr[..., 0].std() > 10


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "1"])
def test_modes_convert_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    arr = decode_rgb(_encode(img, fmt))
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8 and arr.flags.writeable


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert (decode_rgb(_encode(img, "PNG")) == 255).all()


def test_16bit_png_scaled_not_clipped():
    arr16 = np.full((8, 8), 32768, dtype=np.uint16)
    out = decode_rgb(_encode(Image.fromarray(arr16), "PNG"))
    assert out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("data", [b"", None, b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_broken_inputs_return_none(data):
    assert decode_rgb(data) is None


def test_truncated_jpeg_returns_none(real_photos):
    data = next((real_photos / "val" / "n01440764").iterdir()).read_bytes()
    assert decode_rgb(data[: len(data) // 3]) is None


def test_decompression_bomb_is_skipped(monkeypatch):
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 100)
    assert decode_rgb(_encode(Image.new("RGB", (20, 20)), "PNG")) is None
