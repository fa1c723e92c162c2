"""iBOT block masks and MSN token dropping: the stated distributions, and their effect on a ViT."""

from __future__ import annotations

import math
import random

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from rob_ray.models.masking import block_mask, ibot_masks, msn_keep_indices, sample_pred_ratio
from rob_ray.models.vit_tokens import vit_tokens


def _ks_uniform(xs: list[float], lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and U(lo, hi)."""
    xs = sorted(xs)
    n = len(xs)
    return max(max(abs((i + 1) / n - (x - lo) / (hi - lo)), abs(i / n - (x - lo) / (hi - lo))) for i, x in enumerate(xs))


def test_pred_ratio_is_zero_or_uniform_0p1_0p5():
    rng = random.Random(0)
    ratios = [sample_pred_ratio(rng, (0.0, 0.3), (0.0, 0.2)) for _ in range(4000)]
    zeros = sum(r == 0 for r in ratios)
    assert abs(zeros / 4000 - 0.5) < 4 * math.sqrt(0.25 / 4000)  # binomial(4000, 1/2), 4 sigma
    nonzero = [r for r in ratios if r]
    assert min(nonzero) >= 0.1 and max(nonzero) <= 0.5
    assert _ks_uniform(nonzero, 0.1, 0.5) < 1.63 / math.sqrt(len(nonzero))  # KS at the 1 % level


def test_rand_shape_masks_exactly_int_ratio_patches():
    masks = ibot_masks(2000, 14, 14, random.Random(1), pred_shape="rand")
    counts = masks.flatten(1).sum(1)
    nonzero = counts[counts > 0].float() / 196
    assert abs((counts == 0).float().mean().item() - 0.5) < 0.05
    # int(U(0.1, 0.5) * 196) / 196: uniform up to the 1/196 floor.
    assert _ks_uniform((nonzero + 0.5 / 196).tolist(), 0.1, 0.5) < 1.63 / math.sqrt(len(nonzero)) + 1 / 196


def test_block_masks_cover_about_the_ratio_and_never_more():
    rng = random.Random(2)
    for ratio in (0.1, 0.3, 0.5):
        fracs = [block_mask(14, 14, ratio, rng).float().mean().item() for _ in range(100)]
        assert max(fracs) <= ratio + 1e-9  # a block is accepted only within the remaining budget
        assert sum(fracs) / len(fracs) > ratio - 0.02  # blocks stop short by less than one small block
    masks = ibot_masks(1000, 14, 14, random.Random(3))
    frac = masks.flatten(1).float().mean(1)
    assert abs((frac == 0).float().mean().item() - 0.5) < 0.06
    assert 0.27 < frac[frac > 0].mean().item() < 0.31  # E[U(0.1, 0.5)] = 0.3, minus the short stop


def test_block_aspect_ratios_follow_log_uniform_0p3_to_1_over_0p3():
    rng = random.Random(4)
    blocks: list[tuple[int, int, int, int]] = []
    for _ in range(400):
        block_mask(24, 24, rng.uniform(0.1, 0.5), rng, blocks=blocks)
    assert len(blocks) > 500
    for top, left, h, w in blocks:
        assert top >= 0 and top + h <= 24 and left >= 0 and left + w <= 24 and h < 24 and w < 24
        # h = round(sqrt(A r)), w = round(sqrt(A / r)) -> r lies in [(h - .5)/(w + .5), (h + .5)/(w - .5)],
        # which must meet [0.3, 1/0.3].
        r_lo, r_hi = (h - 0.5) / (w + 0.5), (h + 0.5) / max(w - 0.5, 1e-9)
        assert r_hi >= 0.3 - 1e-9 and r_lo <= 1 / 0.3 + 1e-9, (h, w)
    logs = torch.tensor([math.log(h / w) for _, _, h, w in blocks])
    assert abs(logs.mean().item()) < 0.1  # symmetric in log space
    # P(log r > log 2) = (log(1/0.3) - log 2) / (2 log(1/0.3)) = 0.21 for log-uniform r.
    for tail in ((logs > math.log(2)).float().mean().item(), (logs < -math.log(2)).float().mean().item()):
        assert 0.12 < tail < 0.32


def test_masks_are_deterministic_given_the_seed():
    a = ibot_masks(8, 14, 14, random.Random(5))
    b = ibot_masks(8, 14, 14, random.Random(5))
    assert torch.equal(a, b) and not torch.equal(a, ibot_masks(8, 14, 14, random.Random(6)))


@pytest.mark.parametrize("patches, ratio, kept", [(196, 0.15, 166), (196, 0.10, 176), (16, 0.15, 13), (4, 0.5, 2)])
def test_msn_keeps_floor_of_the_remaining_tokens(patches, ratio, kept):
    idx = msn_keep_indices(patches, ratio, random.Random(0))
    assert idx.shape == (kept,) and len(set(idx.tolist())) == kept
    assert idx.min() >= 0 and idx.max() < patches and torch.equal(idx, idx.sort().values)


def _vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             dynamic_img_size=True).eval()


def test_dropping_keeps_cls_and_count_and_changes_the_output():
    vit, x = _vit(), torch.randn(3, 3, 64, 64)
    keep = msn_keep_indices(16, 0.25, random.Random(0))
    with torch.no_grad():
        full = vit_tokens(vit, x)
        dropped = vit_tokens(vit, x, keep=keep)
        assert torch.allclose(full, vit.forward_features(x), atol=1e-6)  # no corruption = timm's forward
        assert dropped.shape == (3, 1 + 12, 32)
        # The class token's input is kept: recompute it by hand from the embeddings (positions added first).
        emb = vit._pos_embed(vit.patch_embed(x))
        manual = vit.norm(vit.blocks(torch.cat([emb[:, :1], emb[:, 1:][:, keep]], dim=1)))
        torch.testing.assert_close(dropped, manual)
    assert not torch.allclose(dropped[:, 0], full[:, 0], atol=1e-4)


def test_mask_token_replaces_only_masked_patch_embeddings():
    vit, x = _vit(), torch.randn(2, 3, 64, 64)
    token = torch.randn(1, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    with torch.no_grad():
        out = vit_tokens(vit, x, mask=mask, mask_token=token)
        emb = vit.patch_embed(x).reshape(2, 16, 32).clone()
        emb[mask.reshape(2, 16)] = token
        manual = vit.norm(vit.blocks(vit._pos_embed(emb.reshape(2, 4, 4, 32))))
        full = vit.forward_features(x)
    torch.testing.assert_close(out, manual)
    torch.testing.assert_close(out[1], full[1])  # image 1 has no masked patch
    assert not torch.allclose(out[0], full[0], atol=1e-4)
