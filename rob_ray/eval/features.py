"""Frozen features of a labelled image table: resize, centre-crop, normalise, embed (plain torch).

`embed_uint8` is the one preprocessing + forward path; the direct loop here and the Ray Data
actors of `rob_ray.eval.ray_features` both call it, so the two give the same embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data.decode import decode_rgb
from rob_ray.data.sources import ImageTable
from rob_ray.errors import EvalInputError

__all__ = ["embed_uint8", "eval_tensor", "extract_features", "load_eval_images"]


def eval_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8: resize the short side to size/0.875, centre-crop."""
    x = torch.from_numpy(image).permute(2, 0, 1)
    x = TF.resize(x, [round(size / 0.875)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


@torch.no_grad()
def embed_uint8(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mean: tuple[float, ...],
                std: tuple[float, ...], device: str | torch.device = "cpu", channels_last: bool = True) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, D) float32 CPU embeddings, normalised with `mean` / `std` (RGB in [0, 1])."""
    device = torch.device(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = images.to(device).float().div_(255)
    x = (x - m) / s
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return embed(x).float().cpu()


def load_eval_images(table: ImageTable, indices: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Decode + eval-crop images `indices` of `table` -> ((n, 3, size, size) uint8, (n,) bool readable).

    Unreadable images come back as zeros with readable=False (the caller drops them).
    """
    out = torch.zeros(len(indices), 3, size, size, dtype=torch.uint8)
    ok = np.zeros(len(indices), dtype=bool)
    for j, i in enumerate(np.asarray(indices).tolist()):
        img = decode_rgb(table.read(i))
        if img is not None:
            out[j] = eval_tensor(img, size)
            ok[j] = True
    return out, ok


@torch.no_grad()
def extract_features(embed: Callable[[torch.Tensor], torch.Tensor], table: ImageTable, size: int,
                     mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 128,
                     device: str | torch.device = "cpu", channels_last: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) and labels (N,) of every readable image in `table` (unreadable ones dropped)."""
    feats, labels = [], []
    for lo in range(0, len(table), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(table)))
        images, ok = load_eval_images(table, idx, size)
        if not ok.any():
            continue
        feats.append(embed_uint8(embed, images[torch.from_numpy(ok)], mean, std, device, channels_last))
        labels.append(torch.from_numpy(table.labels[idx[ok]]))
    if not feats:
        raise EvalInputError("no readable images to embed")
    return torch.cat(feats), torch.cat(labels).long()
