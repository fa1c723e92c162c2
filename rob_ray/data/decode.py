"""Decode encoded image bytes to RGB uint8 arrays; bad inputs become `None`, never exceptions."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

__all__ = ["MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "decode_rgb", "read_bytes"]

# Decompression-bomb guard: ~ 16k x 16k. Larger images are skipped, not decoded.
MAX_IMAGE_PIXELS = 256_000_000
# Images with a side shorter than this (1x1 tracking pixels, 3x2 icons) carry nothing a crop can
# learn from: skipped and counted. Larger images smaller than the crop are upsampled by the crop.
MIN_IMAGE_SIDE = 8


def read_bytes(path: str) -> bytes | None:
    """Read a file; `None` when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def decode_rgb(data: bytes | None) -> np.ndarray | None:
    """Decode image bytes to an (H, W, 3) uint8 RGB array.

    Greyscale, palette, CMYK, alpha and 16-bit images are converted; zero-byte, truncated,
    non-image, over-sized (decompression bomb) and tiny (a side < MIN_IMAGE_SIDE) inputs return
    `None` so the caller can count and skip them.
    """
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS or min(img.width, img.height) < MIN_IMAGE_SIDE:
                    return None
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16/32-bit greyscale: scale to 8 bits ourselves; PIL's convert clips instead.
                    arr = np.asarray(img, dtype=np.float64)
                    peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                    arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    return np.repeat(arr[:, :, None], 3, axis=2)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # Composite on white, as a viewer shows it, rather than keeping hidden colours.
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, rgba)
                rgb = img.convert("RGB")
                arr = np.array(rgb, dtype=np.uint8)  # writable copy: torch refuses read-only buffers
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError, EOFError):
        return None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        return None
    return np.ascontiguousarray(arr)
