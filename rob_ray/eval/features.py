"""Frozen features of a labelled image table: resize, centre-crop, normalise, embed (plain torch)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data.decode import decode_rgb
from rob_ray.data.sources import ImageTable

__all__ = ["eval_tensor", "extract_features"]


def eval_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8: resize the short side to size/0.875, centre-crop."""
    x = torch.from_numpy(image).permute(2, 0, 1)
    x = TF.resize(x, [round(size / 0.875)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


@torch.no_grad()
def extract_features(embed: Callable[[torch.Tensor], torch.Tensor], table: ImageTable, size: int,
                     mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 128,
                     device: str | torch.device = "cpu", channels_last: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) and labels (N,) of every readable image in `table` (unreadable ones dropped)."""
    device = torch.device(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    feats, labels, buf, buf_labels = [], [], [], []

    def flush() -> None:
        x = torch.stack(buf).to(device).float().div_(255)
        x = (x - m) / s
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(embed(x).float().cpu())
        labels.extend(buf_labels)
        buf.clear()
        buf_labels.clear()

    for i in range(len(table)):
        img = decode_rgb(table.read(i))
        if img is None:
            continue
        buf.append(eval_tensor(img, size))
        buf_labels.append(int(table.labels[i]))
        if len(buf) == batch_size:
            flush()
    if buf:
        flush()
    if not feats:
        raise ValueError("no readable images to embed")
    return torch.cat(feats), torch.tensor(labels, dtype=torch.int64)
