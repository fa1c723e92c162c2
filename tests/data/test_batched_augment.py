"""Batched (device-side) multi-crop: each op against torchvision, the draws against the per-image
reference policy, determinism, and that padding is never read."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data import CropPolicy, MultiCropAugment, decode_rgb, sample_crop_box, sample_seed
from rob_ray.data.batched_augment import (
    BatchedMultiCrop,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_resize,
    gaussian_blur,
    grayscale,
    sample_boxes,
    sample_params,
    select,
    solarize,
)
from tests.conftest import DEMO_DATA

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photos(n: int, side: int | None = None) -> list[np.ndarray]:
    files = sorted((DEMO_DATA / "train").rglob("*.JPEG"))[::7][:n]
    imgs = [decode_rgb(f.read_bytes()) for f in files]
    return [img[:side, :side] for img in imgs] if side else imgs


def _batch(imgs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    h = max(i.shape[0] for i in imgs)
    w = max(i.shape[1] for i in imgs)
    out = torch.zeros(len(imgs), 3, h, w, dtype=torch.uint8)
    for k, img in enumerate(imgs):
        out[k, :, : img.shape[0], : img.shape[1]] = torch.from_numpy(img).permute(2, 0, 1)
    return out, torch.tensor([i.shape[:2] for i in imgs])


def test_crop_resize_matches_torchvision_bicubic_antialias():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 70, 90), generator=gen, dtype=torch.uint8)
    # Downscale, upscale, thin and one-pixel boxes, with and without flips.
    boxes = torch.tensor([[[5, 7, 60, 80], [0, 0, 70, 90], [10, 3, 9, 30]],
                          [[1, 2, 3, 4], [30, 40, 40, 50], [69, 89, 1, 1]]])
    flip = torch.tensor([[False, True, False], [True, False, True]])
    out = crop_resize(images, boxes, 24, flip)
    assert out.shape == (6, 3, 24, 24)
    for v in range(2):
        for b in range(3):
            t, left, h, w = boxes[v, b].tolist()
            ref = TF.resized_crop(images[b].float() / 255, t, left, h, w, [24, 24],
                                  interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
            ref = TF.horizontal_flip(ref) if flip[v, b] else ref
            torch.testing.assert_close(out[v * 3 + b], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(name):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 12, 12, generator=gen)
    x[0] = 0.5  # grey: hue undefined, saturation zero
    ours, theirs, lo, hi = {
        "brightness": (adjust_brightness, TF.adjust_brightness, 0.0, 1.6),
        "contrast": (adjust_contrast, TF.adjust_contrast, 0.0, 1.6),
        "saturation": (adjust_saturation, TF.adjust_saturation, 0.0, 1.6),
        "hue": (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    }[name]
    f = lo + (hi - lo) * torch.rand(6, generator=gen)
    out = ours(x.clone(), f)
    for i in range(6):
        torch.testing.assert_close(out[i], theirs(x[i], float(f[i])), atol=2e-6, rtol=0)


def _hue_with_where_and_mod(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The HSV hue rotation written with `where`, `%` and `max(dim)` (torchvision's formulas)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    h6 = ((hue + shift.view(-1, 1, 1)) % 1.0) * 6
    out = [maxc - delta * torch.minimum((h6 + n) % 6, 4 - (h6 + n) % 6).clamp(0.0, 1.0) for n in (5.0, 3.0, 1.0)]
    return torch.stack(out, dim=1).clamp(0.0, 1.0)


def test_hue_and_solarize_equal_the_where_and_mod_formulas_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(40, 3, 9, 9, generator=gen)
    x[:4] = (x[:4] * 8).round() / 8  # ties between channels (two or three share the maximum)
    x[4] = 0.5  # grey
    x[5, :, :3] = 0.0
    x[5, :, 3:6] = 1.0
    x[6, 0], x[6, 1] = x[6, 1], x[6, 0]  # red and green swapped: the maximum moves channel
    x[7] = 128 / 255  # exactly at the solarize threshold
    x[8] = torch.nextafter(torch.tensor(128 / 255), torch.tensor(0.0))
    # The extreme shifts (a whole period either way) and tiny ones round the hue up to 1.
    shift = torch.cat([torch.tensor([-0.5, 0.5, 0.0, -0.0, 1e-9, -1e-9]), torch.rand(34, generator=gen) - 0.5])
    assert torch.equal(adjust_hue(x, shift), _hue_with_where_and_mod(x, shift))
    assert torch.equal(solarize(x), torch.where(x >= 128 / 255, 1.0 - x, x))
    mask = torch.rand(x.shape, generator=gen) < 0.5
    y = -torch.rand(x.shape, generator=gen)  # negative values and zeros of either sign
    y[0, 0, 0] = -0.0
    assert torch.equal(select(mask, x, y), torch.where(mask, x, y))
    assert torch.equal(select(mask, y, x), torch.where(mask, y, x))


def test_grayscale_and_blur_match_torchvision():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 20, 20, generator=gen)
    torch.testing.assert_close(grayscale(x).expand(-1, 3, -1, -1), TF.rgb_to_grayscale(x, num_output_channels=3))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
    ksize = torch.clamp(2 * torch.ceil(3 * sigma).long() + 1, max=13)
    out = gaussian_blur(x, sigma, ksize, 13)
    for i in range(5):
        k = int(ksize[i])
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_boxes_follow_the_reference_sampler():
    h, w, n = 120, 200, 3000
    rng = np.random.default_rng(0)
    ref = np.array([sample_crop_box(rng, h, w, (0.05, 0.4), (3 / 4, 4 / 3)) for _ in range(n)], dtype=np.float64)
    ours = sample_boxes(torch.tensor([[h, w]] * n), torch.tensor([[0.05, 0.4]], dtype=torch.float64), (3 / 4, 4 / 3),
                        torch.Generator().manual_seed(0))[0].double().numpy()
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for col in (lambda b: b[:, 2] * b[:, 3] / (h * w), lambda b: np.log(b[:, 3] / b[:, 2]),
                lambda b: (b[:, 0] + b[:, 2] / 2) / h, lambda b: (b[:, 1] + b[:, 3] / 2) / w):
        a, r = col(ours), col(ref)
        # Same law: means within 4 standard errors, quantiles within a few % of the range.
        assert abs(a.mean() - r.mean()) < 4 * r.std() * math.sqrt(2 / n)
        assert np.abs(np.quantile(a, [0.1, 0.5, 0.9]) - np.quantile(r, [0.1, 0.5, 0.9])).max() < 0.05 * np.ptp(r)


def test_box_fallback_equals_reference_on_extreme_aspect():
    ours = sample_boxes(torch.tensor([[4, 400], [400, 4]]), torch.tensor([[0.9, 1.0]], dtype=torch.float64),
                        (3 / 4, 4 / 3), torch.Generator().manual_seed(0))[0]
    rng = np.random.default_rng(0)
    assert ours[0].tolist() == list(sample_crop_box(rng, 4, 400, (0.9, 1.0), (3 / 4, 4 / 3))) == [0, 197, 4, 5]
    assert ours[1].tolist() == list(sample_crop_box(rng, 400, 4, (0.9, 1.0), (3 / 4, 4 / 3)))


def test_draw_rates_follow_the_policy():
    p = CropPolicy(num_global=2, num_local=6, global_size=32, local_size=16)
    b = 1000
    prm = sample_params(p, torch.tensor([[64, 80]] * b), torch.Generator().manual_seed(3))

    def close(rate: torch.Tensor, prob: float, n: int) -> bool:
        return abs(float(rate) - prob) <= 4 * math.sqrt(max(prob * (1 - prob), 1e-12) / n) + 1e-9

    kinds = [p.view_kind(v) for v in range(p.num_views)]
    for v, k in enumerate(kinds):
        assert close(prm.blur[v].float().mean(), p.blur_prob[k], b)
        assert close(prm.solarize[v].float().mean(), p.solarize_prob[k], b)
    n = p.num_views * b
    assert close(prm.flip.float().mean(), p.flip_prob, n)
    assert close(prm.jitter.float().mean(), p.color_jitter_prob, n)
    assert close(prm.gray.float().mean(), p.grayscale_prob, n)
    assert (prm.order.sort(dim=-1).values == torch.arange(4)).all()  # every order is a permutation
    assert close((prm.order[..., 0] == 3).float().mean(), 0.25, n)  # hue first in a quarter of the views
    f = prm.factors
    assert f[..., 0].min() >= 0.6 and f[..., 0].max() <= 1.4 and f[..., 2].min() >= 0.8 and f[..., 2].max() <= 1.2
    assert f[..., 3].abs().max() <= 0.1 and f[..., 3].std() > 0.05
    assert prm.sigma.min() >= 0.1 and prm.sigma.max() <= 2.0


@pytest.fixture
def one_thread():
    # Many tiny ops: on a shared 2-core box, intra-op threads only add synchronisation.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_outputs_match_the_reference_pipeline_statistically(one_thread):
    """Same photos through the per-image reference and the batched path: per view kind, the
    mean and spread of pixel values and the share of grey views agree."""
    p = CropPolicy(num_global=2, num_local=2, global_size=32, local_size=16)
    imgs = _photos(40)
    ref_views: list[list[torch.Tensor]] = [[] for _ in range(p.num_views)]
    aug = MultiCropAugment(p)
    for rep in range(2):
        for i, img in enumerate(imgs):
            g, loc = aug(img, sample_seed(rep, 0, i))
            for v, view in enumerate([*g, *loc]):
                ref_views[v].append(view.float() / 255)
    images, sizes = _batch(imgs)
    ours = BatchedMultiCrop(p)
    outs = [ours(images, sizes, torch.Generator().manual_seed(rep)) for rep in range(2)]
    ours_g = torch.cat([o[0].view(2, -1, 3, 32, 32) for o in outs], dim=1)
    ours_l = torch.cat([o[1].view(2, -1, 3, 16, 16) for o in outs], dim=1)
    for v in range(p.num_views):
        a = (ours_g[v] if v < 2 else ours_l[v - 2])
        r = torch.stack(ref_views[v])
        assert a.shape == r.shape
        assert a.min() >= 0 and a.max() <= 1 + 1e-6
        assert abs(a.mean() - r.mean()) < 0.04, v
        assert abs(a.std() - r.std()) < 0.04, v
    grey = lambda x: ((x[:, 0] - x[:, 1]).abs().amax(dim=(1, 2)) < 1e-3).float().mean()  # noqa: E731
    ours_grey = torch.stack([grey(ours_g[v]) for v in range(2)] + [grey(ours_l[v]) for v in range(2)]).mean()
    ref_grey = torch.stack([grey(torch.stack(r)) for r in ref_views]).mean()
    assert abs(float(ours_grey) - float(ref_grey)) < 0.06 and abs(float(ours_grey) - 0.2) < 0.06


def test_normalised_output_ranges_and_layout():
    p = CropPolicy(num_global=2, num_local=3, global_size=24, local_size=12)
    images, sizes = _batch(_photos(5))
    g, loc = BatchedMultiCrop(p, MEAN, STD, channels_last=True)(images, sizes, torch.Generator().manual_seed(0))
    assert g.shape == (10, 3, 24, 24) and loc.shape == (15, 3, 12, 12) and g.dtype == torch.float32
    assert g.is_contiguous(memory_format=torch.channels_last)
    lo = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    hi = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    for x in (g, loc):
        assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
    no_local = BatchedMultiCrop(CropPolicy(num_global=1, num_local=0, global_size=16))
    g1, l1 = no_local(images, sizes, torch.Generator().manual_seed(0))
    assert g1.shape == (5, 3, 16, 16) and l1 is None


def test_same_seed_same_views_other_seed_differs():
    p = CropPolicy(global_size=24, local_size=12, num_local=2)
    images, sizes = _batch(_photos(4))
    aug = BatchedMultiCrop(p, MEAN, STD)
    a = aug(images, sizes, torch.Generator().manual_seed(11))
    b = aug(images, sizes, torch.Generator().manual_seed(11))
    c = aug(images, sizes, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_padding_is_never_read():
    """Black images of different sizes in a 255-filled canvas: with every op switched on,
    any weight on the padding would show up as a non-black pixel."""
    p = CropPolicy(global_size=40, local_size=16, num_local=4, blur_prob=(1.0, 1.0, 1.0),
                   solarize_prob=(1.0, 1.0, 1.0), color_jitter_prob=1.0)
    sizes = torch.tensor([[30, 50], [64, 64], [7, 3], [64, 20]])
    images = torch.full((4, 3, 64, 64), 255, dtype=torch.uint8)
    for k, (h, w) in enumerate(sizes.tolist()):
        images[k, :, :h, :w] = 0
    for seed in range(3):
        g, loc = BatchedMultiCrop(p)(images, sizes, torch.Generator().manual_seed(seed))
        assert g.abs().max() == 0 and loc.abs().max() == 0


def test_views_do_not_depend_on_a_callers_autocast():
    """A bf16 training step queues the next step's views from inside its autocast region; the crops'
    blur is a convolution, which autocast would run in bf16 (and then fail to write it back)."""
    p = CropPolicy(global_size=24, local_size=12, num_local=2, blur_prob=(1.0, 1.0, 1.0))
    images, sizes = _batch(_photos(4))
    aug = BatchedMultiCrop(p, MEAN, STD)
    plain = aug(images, sizes, torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = aug(images, sizes, torch.Generator().manual_seed(5))
        assert torch.is_autocast_enabled("cpu")  # the caller's context is restored
    assert all(t.dtype == torch.float32 for t in inside)
    assert torch.equal(plain[0], inside[0]) and torch.equal(plain[1], inside[1])
