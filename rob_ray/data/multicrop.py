"""Per-image multi-crop augmentation on CPU (the reference policy).

Every random draw comes from a `numpy.random.Generator` the caller seeds, so the views of a
sample are a pure function of (seed, epoch, image) — which is what makes resume exact.
Output views stay uint8; normalisation happens on the training device (4x less data moved).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data.policy import CropPolicy

__all__ = ["MultiCropAugment", "sample_crop_box", "sample_seed"]


def sample_seed(seed: int, epoch: int, image_index: int) -> np.random.Generator:
    """Independent stream per (seed, epoch, image): the same sample gets the same views on any worker."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, image_index])


def sample_crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): torchvision's 10-try rule, then a centre fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    h, w = max(h, 1), max(w, 1)
    return (height - h) // 2, (width - w) // 2, h, w


class MultiCropAugment:
    """Turns one RGB uint8 image into `policy.num_global` + `policy.num_local` uint8 views.

    Args:
        policy: the crop policy (sizes, scales, colour-op strengths and probabilities).

    Call with an (H, W, 3) uint8 array and a seeded generator; returns
    (globals (G, 3, Sg, Sg) uint8, locals (L, 3, Sl, Sl) uint8).
    """

    def __init__(self, policy: CropPolicy) -> None:
        self.policy = policy

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.policy
        img = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        views = [self._view(img, rng, v) for v in range(p.num_views)]
        g = torch.stack(views[: p.num_global])
        if p.num_local:
            loc = torch.stack(views[p.num_global:])
        else:
            loc = torch.zeros((0, 3, p.local_size, p.local_size), dtype=torch.uint8)
        return g, loc

    def _view(self, img: torch.Tensor, rng: np.random.Generator, v: int) -> torch.Tensor:
        p = self.policy
        kind = p.view_kind(v)
        size = p.global_size if kind < 2 else p.local_size
        scale = p.global_scale if kind < 2 else p.local_scale
        top, left, h, w = sample_crop_box(rng, img.shape[1], img.shape[2], scale, p.ratio)
        # DINO resizes with bicubic; antialias matters when a large crop shrinks to 96 px.
        out = TF.resized_crop(img, top, left, h, w, [size, size],
                              interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        if rng.random() < p.flip_prob:
            out = TF.horizontal_flip(out)
        if rng.random() < p.color_jitter_prob:
            out = self._color_jitter(out, rng)
        if rng.random() < p.grayscale_prob:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        if rng.random() < p.blur_prob[kind]:
            sigma = float(rng.uniform(*p.blur_sigma))
            k = min(2 * math.ceil(3 * sigma) + 1, 2 * (size // 2) - 1)
            out = TF.gaussian_blur(out, [k, k], [sigma, sigma])
        if rng.random() < p.solarize_prob[kind]:
            out = TF.solarize(out, 128)
        return out

    def _color_jitter(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        # torchvision ColorJitter: the four ops in a random order, each with a uniform factor.
        p = self.policy
        for op in rng.permutation(4):
            if op == 0 and p.brightness > 0:
                img = TF.adjust_brightness(img, float(rng.uniform(max(0.0, 1 - p.brightness), 1 + p.brightness)))
            elif op == 1 and p.contrast > 0:
                img = TF.adjust_contrast(img, float(rng.uniform(max(0.0, 1 - p.contrast), 1 + p.contrast)))
            elif op == 2 and p.saturation > 0:
                img = TF.adjust_saturation(img, float(rng.uniform(max(0.0, 1 - p.saturation), 1 + p.saturation)))
            elif op == 3 and p.hue > 0:
                img = TF.adjust_hue(img, float(rng.uniform(-p.hue, p.hue)))
        return img
