"""Multi-crop policy: shapes, dtypes, ranges, crop geometry, determinism, real photos."""

from __future__ import annotations

import math

import numpy as np
import torch

from rob_ray.data import CropPolicy, MultiCropAugment, decode_rgb, sample_crop_box, sample_seed


def test_real_image_gives_dino_views(real_photos):
    img = decode_rgb(next((real_photos / "train" / "n03888257").iterdir()).read_bytes())
    g, loc = MultiCropAugment(CropPolicy())(img, sample_seed(0, 0, 0))
    assert g.shape == (2, 3, 224, 224) and loc.shape == (10, 3, 96, 96)
    assert g.dtype == torch.uint8 and loc.dtype == torch.uint8
    assert g.float().std() > 5  # real content, not a constant fill


def test_small_policy_and_no_locals():
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    g, loc = MultiCropAugment(CropPolicy(num_global=1, num_local=0, global_size=32))(img, sample_seed(1, 2, 3))
    assert g.shape == (1, 3, 32, 32) and loc.shape == (0, 3, 96, 96)


def test_same_seed_same_views_other_seed_differs():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    aug = MultiCropAugment(CropPolicy(global_size=32, local_size=16, num_local=2))
    a = aug(img, sample_seed(0, 1, 5))
    b = aug(img, sample_seed(0, 1, 5))
    c = aug(img, sample_seed(0, 2, 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_crop_boxes_stay_inside_and_follow_scale():
    rng = np.random.default_rng(0)
    h, w = 120, 200
    fracs, ratios = [], []
    for _ in range(2000):
        top, left, ch, cw = sample_crop_box(rng, h, w, (0.05, 0.4), (3 / 4, 4 / 3))
        assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
        fracs.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    fracs, ratios = np.array(fracs), np.array(ratios)
    # Rounding to whole pixels moves the edges a little; the bulk must follow U(0.05, 0.4).
    assert fracs.min() > 0.045 and fracs.max() < 0.42
    assert abs(fracs.mean() - 0.225) < 0.01
    assert math.log(3 / 4) - 0.05 < np.log(ratios).min() and np.log(ratios).max() < math.log(4 / 3) + 0.05


def test_crop_box_fallback_on_extreme_aspect():
    rng = np.random.default_rng(0)
    _, left, h, w = sample_crop_box(rng, 4, 400, (0.9, 1.0), (3 / 4, 4 / 3))
    assert (h, w) == (4, 5) and left == (400 - 5) // 2


def test_solarize_probability_per_view_kind():
    """Solarize applies per view kind: (first global, other globals, locals)."""
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:, 32:] = 250
    pol = CropPolicy(num_local=0, global_size=32, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0,
                     color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0, 0.0, 0.0), solarize_prob=(0.0, 1.0, 0.0))
    g, _ = MultiCropAugment(pol)(img, sample_seed(0, 0, 0))
    # Solarize inverts pixels >= 128: only the second view's bright half turns dark.
    assert g[0, :, :, -1].min() >= 245 and g[1, :, :, -1].max() <= 10
    assert g[0, :, :, 0].max() <= 5 and g[1, :, :, 0].max() <= 5
