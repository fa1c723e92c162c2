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

__all__ = ["DRAW_FIELDS", "MultiCropAugment", "apply_view", "draw_view", "draw_views", "sample_crop_box", "sample_seed"]


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


# One view's draws as a flat row (the worker placement ships them beside the decoded image):
# top, left, h, w, flip, jitter, order[4], factors[4] (brightness, contrast, saturation, hue), gray, blur, sigma, solarize.
DRAW_FIELDS = 18


def draw_view(rng: np.random.Generator, height: int, width: int, policy: CropPolicy, v: int) -> np.ndarray:
    """Every random choice of view `v` of one (height x width) image, in the reference's draw order.

    The order of `rng` calls is the per-image policy's (box, flip, jitter [order, factors of the
    ops with a non-zero strength], grayscale, blur [sigma], solarize), so a placement that applies
    these draws elsewhere (batched, in the training worker) makes the views this module makes.
    Returns a float64 row of `DRAW_FIELDS`; undrawn factors are neutral (1, 1, 1, 0), order 0..3.
    """
    p = policy
    kind = p.view_kind(v)
    scale = p.global_scale if kind < 2 else p.local_scale
    row = np.zeros(DRAW_FIELDS, dtype=np.float64)
    row[0:4] = sample_crop_box(rng, height, width, scale, p.ratio)
    row[4] = rng.random() < p.flip_prob
    row[6:10] = (0, 1, 2, 3)
    row[10:14] = (1.0, 1.0, 1.0, 0.0)
    if rng.random() < p.color_jitter_prob:
        row[5] = 1.0
        order = rng.permutation(4)
        row[6:10] = order
        bounds = ((max(0.0, 1 - p.brightness), 1 + p.brightness), (max(0.0, 1 - p.contrast), 1 + p.contrast),
                  (max(0.0, 1 - p.saturation), 1 + p.saturation), (-p.hue, p.hue))
        strengths = (p.brightness, p.contrast, p.saturation, p.hue)
        for op in order:
            if strengths[op] > 0:
                row[10 + op] = float(rng.uniform(*bounds[op]))
    row[14] = rng.random() < p.grayscale_prob
    if rng.random() < p.blur_prob[kind]:
        row[15] = 1.0
        row[16] = float(rng.uniform(*p.blur_sigma))
    row[17] = rng.random() < p.solarize_prob[kind]
    return row


def draw_views(rng: np.random.Generator, height: int, width: int, policy: CropPolicy) -> np.ndarray:
    """(V, DRAW_FIELDS) draws of all views of one image (what `MultiCropAugment` consumes, in order)."""
    return np.stack([draw_view(rng, height, width, policy, v) for v in range(policy.num_views)])


def apply_view(img: torch.Tensor, row: np.ndarray, policy: CropPolicy, v: int) -> torch.Tensor:
    """The per-image reference ops (torchvision, uint8) for one view's draws."""
    p = policy
    kind = p.view_kind(v)
    size = p.global_size if kind < 2 else p.local_size
    top, left, h, w = (int(x) for x in row[0:4])
    # DINO resizes with bicubic; antialias matters when a large crop shrinks to 96 px.
    out = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    if row[4]:
        out = TF.horizontal_flip(out)
    if row[5]:  # torchvision ColorJitter: the four ops in a random order, each with a uniform factor
        strengths = (p.brightness, p.contrast, p.saturation, p.hue)
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in row[6:10].astype(np.int64):
            if strengths[op] > 0:
                out = ops[op](out, float(row[10 + op]))
    if row[14]:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if row[15]:
        sigma = float(row[16])
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * (size // 2) - 1)
        out = TF.gaussian_blur(out, [k, k], [sigma, sigma])
    if row[17]:
        out = TF.solarize(out, 128)
    return out


class MultiCropAugment:
    """Turns one RGB uint8 image into `policy.num_global` + `policy.num_local` uint8 views.

    Args:
        policy: the crop policy (sizes, scales, colour-op strengths and probabilities).

    Call with an (H, W, 3) uint8 array and a seeded generator; returns
    (globals (G, 3, Sg, Sg) uint8, locals (L, 3, Sl, Sl) uint8). `apply(img, draws)` makes the
    views from given draws (`draw_views`).
    """

    def __init__(self, policy: CropPolicy) -> None:
        self.policy = policy

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # Draw and apply view by view: the same generator calls, in the same order, as ever.
        img = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        h, w = img.shape[1:]
        return self._stack([apply_view(img, draw_view(rng, h, w, self.policy, v), self.policy, v)
                            for v in range(self.policy.num_views)])

    def apply(self, image: np.ndarray, draws: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of an (H, W, 3) uint8 image from its (V, DRAW_FIELDS) draws."""
        img = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return self._stack([apply_view(img, draws[v], self.policy, v) for v in range(self.policy.num_views)])

    def _stack(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.policy
        g = torch.stack(views[: p.num_global])
        if p.num_local:
            loc = torch.stack(views[p.num_global:])
        else:
            loc = torch.zeros((0, 3, p.local_size, p.local_size), dtype=torch.uint8)
        return g, loc
