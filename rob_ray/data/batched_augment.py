"""Batched multi-crop augmentation on the training device (plain torch; CPU tensors work too).

The per-image reference is `MultiCropAugment` (DINO's DataAugmentationDINO, Caron et al. 2021):
random resized crop -> flip -> colour jitter (random op order) -> grayscale -> Gaussian blur ->
solarize. Here every view of every image of a batch is made at once:

- all random draws are made on the host before any pixel work: in the training loop they come
  with the batch (`params_from_draws`: the Ray Data actors draw them per image with the per-image
  policy's generator and order, so both crop placements use the same draws); benchmarks draw a
  step's at once from one seeded `torch.Generator` (`sample_params`, `step_generator`). Either way
  CPU and GPU runs of the same seed use the very same crops and factors;
- crop + resize + flip is linear and separable: out = Wy @ image @ Wx^T, with antialiased
  bicubic (PIL/torchvision `antialias=True`, a = -0.5) rows that only cover the crop box, so a
  padded batch never reads outside an image's own pixels and downscaling is filtered;
- each colour op runs only on the views that drew it (index lists known on the host: no sync).

Values live in [0, 1] between ops (torchvision's float convention); the output is normalised.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rob_ray.data.policy import CropPolicy
from rob_ray.precision import outside_autocast

__all__ = [
    "AugmentParams",
    "BatchedMultiCrop",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "crop_resize",
    "gaussian_blur",
    "grayscale",
    "params_from_draws",
    "sample_boxes",
    "sample_params",
    "select",
    "solarize",
    "step_generator",
]

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


# ---------------------------------------------------------------- parameter sampling (CPU)


def sample_boxes(sizes: torch.Tensor, scale: torch.Tensor, ratio: tuple[float, float], generator: torch.Generator
                 ) -> torch.Tensor:
    """RandomResizedCrop boxes for V views of B images, vectorised (torchvision's 10-try rule,
    then the centre fallback), as `sample_crop_box` does per image.

    Args:
        sizes: (B, 2) int64 image (height, width).
        scale: (V, 2) float64 area-fraction range per view.
    Returns: (V, B, 4) int64 boxes (top, left, h, w), always inside the image.
    """
    v, b = scale.shape[0], sizes.shape[0]
    height, width = sizes[:, 0].double(), sizes[:, 1].double()
    area = (height * width).view(1, b, 1)
    lo, hi = scale[:, 0].view(v, 1, 1), scale[:, 1].view(v, 1, 1)
    target = area * (lo + (hi - lo) * torch.rand(v, b, 10, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(v, b, 10, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width.view(1, b, 1)) & (h > 0) & (h <= height.view(1, b, 1))
    first = ok.to(torch.int8).argmax(dim=-1, keepdim=True)  # the first try that fits
    found = ok.any(dim=-1)
    w, h = w.gather(-1, first).squeeze(-1), h.gather(-1, first).squeeze(-1)
    # Centre fallback (extreme aspect ratios): the largest crop within the ratio range.
    in_ratio = width / height
    fw = torch.where(in_ratio < ratio[0], width, torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width))
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    fw, fh = fw.clamp_min(1).expand(v, b), fh.clamp_min(1).expand(v, b)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u_top, u_left = torch.rand(2, v, b, generator=generator, dtype=torch.float64)
    top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=-1).long()


@dataclass
class AugmentParams:
    """Every random choice of one batch, view-major, on the CPU: tensors are (V, B, ...).

    boxes (V, B, 4) int64 (top, left, h, w); flip, jitter, gray, blur, solarize (V, B) bool;
    factors (V, B, 4) float (brightness, contrast, saturation, hue); order (V, B, 4) int64 (a
    permutation of the four jitter ops); sigma (V, B) float.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def sample_params(policy: CropPolicy, sizes: torch.Tensor, generator: torch.Generator) -> AugmentParams:
    """Draw one batch's augmentation parameters with the probabilities of `policy`.

    sizes: (B, 2) int64 (height, width) of each image's pixels.
    """
    p, b = policy, sizes.shape[0]
    v = p.num_views
    kinds = torch.tensor([p.view_kind(i) for i in range(v)])
    scale = torch.tensor([p.global_scale if k < 2 else p.local_scale for k in kinds.tolist()], dtype=torch.float64)
    boxes = sample_boxes(sizes.long().cpu(), scale, p.ratio, generator)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * rand(v, b)

    flip = rand(v, b) < p.flip_prob
    jitter = rand(v, b) < p.color_jitter_prob
    factors = torch.stack([
        uniform(max(0.0, 1 - p.brightness), 1 + p.brightness),
        uniform(max(0.0, 1 - p.contrast), 1 + p.contrast),
        uniform(max(0.0, 1 - p.saturation), 1 + p.saturation),
        uniform(-p.hue, p.hue),
    ], dim=-1)
    order = rand(v, b, 4).argsort(dim=-1)  # a uniformly random permutation per view
    gray = rand(v, b) < p.grayscale_prob
    blur = rand(v, b) < torch.tensor(p.blur_prob)[kinds].view(v, 1)
    sigma = uniform(*p.blur_sigma)
    solarize = rand(v, b) < torch.tensor(p.solarize_prob)[kinds].view(v, 1)
    return AugmentParams(boxes, flip, jitter, factors, order, gray, blur, sigma, solarize)


def params_from_draws(draws: np.ndarray | torch.Tensor) -> AugmentParams:
    """(B, V, DRAW_FIELDS) per-image draws (`rob_ray.data.multicrop.draw_views`, shipped by the data
    actors) -> the batch's view-major `AugmentParams`."""
    d = torch.as_tensor(np.array(draws, dtype=np.float64, copy=True) if isinstance(draws, np.ndarray)
                        else draws).transpose(0, 1)  # (V, B, F); a copy: Ray Data's arrays are read-only
    return AugmentParams(boxes=d[..., 0:4].long(), flip=d[..., 4] > 0, jitter=d[..., 5] > 0, order=d[..., 6:10].long(),
                         factors=d[..., 10:14].float(), gray=d[..., 14] > 0, blur=d[..., 15] > 0, sigma=d[..., 16].float(),
                         solarize=d[..., 17] > 0)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator for one step's `sample_params`: a pure function of (seed, rank, step)."""
    key = zlib.crc32(np.asarray([seed & 0xFFFFFFFF, rank, step], dtype=np.int64).tobytes())
    return torch.Generator().manual_seed((int(seed) & 0xFFFFFFFF) * 1_000_003 + key)


# ---------------------------------------------------------------- crop + resize


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic kernel with PIL's a = -0.5 (what torchvision uses when antialias=True)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((a * x - 5 * a) * x + 8 * a) * x - 4 * a) * (x < 2)
    return torch.where(x < 1, near, far)


def taps_for(length: torch.Tensor, out_size: int) -> int:
    """Input pixels one output sample can reach (host side, from the boxes): the kernel spans
    4 x max(1, length / out_size) pixels."""
    return math.ceil(4 * max(1.0, float(length.max()) / out_size)) + 1 if length.numel() else 1


def _resize_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int, flip: torch.Tensor | None,
                    taps: int | None = None) -> torch.Tensor:
    """(N, out_size, in_size) rows mapping input pixels [start, start+length) to out_size samples.

    Antialiased bicubic: the kernel is widened by the downscale factor, and rows are normalised
    over the crop's own pixels only (torchvision crops first, then resizes). The kernel is evaluated
    on the `taps` pixels around each sample only (`taps_for`; default: every pixel) and scattered
    into the dense rows, a tenth of the work of evaluating it everywhere at usual crop sizes.
    """
    start, length = start.float().view(-1, 1, 1), length.float().view(-1, 1, 1)
    dev = start.device
    o = torch.arange(out_size, device=dev, dtype=torch.float32).view(1, -1, 1)
    if flip is not None:  # a horizontal flip is the same rows in reverse order
        o = torch.where(flip.view(-1, 1, 1), out_size - 1 - o, o)
    scale = length / out_size
    support = scale.clamp_min(1.0)
    centre = start + (o + 0.5) * scale  # (N, S, 1), in pixel-edge coordinates
    if taps is None or taps >= in_size:
        pix = torch.arange(in_size, device=dev, dtype=torch.float32).view(1, 1, -1)
    else:  # the first pixel whose centre is within 2 supports of the sample, then `taps` of them
        pix = torch.ceil(centre - 0.5 - 2 * support) + torch.arange(taps, device=dev, dtype=torch.float32)
    w = _cubic((pix + 0.5 - centre) / support) * ((pix >= start) & (pix < start + length))
    w = w / w.sum(dim=-1, keepdim=True)
    if pix.shape[-1] == in_size and pix.shape[0] == 1:
        return w
    dense = torch.zeros(w.shape[0], out_size, in_size, device=dev, dtype=w.dtype)
    return dense.scatter_add_(-1, pix.clamp(0, in_size - 1).long(), w)  # clamped taps carry weight 0


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, out_size: int, flip: torch.Tensor | None = None,
                compute_dtype: torch.dtype | None = None, taps: tuple[int, int] | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """Crop V boxes from each of B images and resize them to out_size (antialiased bicubic).

    Args:
        images: (B, 3, H, W) uint8 (or float in [0, 255]); pixels outside each box are never used.
        boxes: (V, B, 4) int (top, left, h, w), on the images' device.
        flip: (V, B) bool, mirror horizontally.
        taps: (rows, columns) kernel taps (`taps_for` of the box heights / widths); None: dense.
        channels_last: return a channels_last tensor (the same single copy makes it).
    Returns: (V * B, 3, S, S) float32 in [0, 1], view-major.
    """
    b, c, height, width = images.shape
    v = boxes.shape[0]
    s = out_size
    dtype = compute_dtype or (torch.float16 if images.is_cuda else torch.float32)
    bx = boxes.transpose(0, 1).reshape(b * v, 4)  # image-major here: one batched product per image
    fl = None if flip is None else flip.transpose(0, 1).reshape(b * v)
    ty, tx = taps if taps is not None else (None, None)
    wy = _resize_weights(bx[:, 0], bx[:, 2], s, height, None, ty) / 255.0
    wx = _resize_weights(bx[:, 1], bx[:, 3], s, width, fl, tx)
    wy, wx = wy.to(dtype).view(b, v * s, height), wx.to(dtype).view(b, v * s, width)
    x = images.to(dtype).reshape(b, c * height, width)  # a no-op when the caller converted already
    # Columns first, rows second, each one batched product; the layouts chain without a copy:
    t = torch.bmm(wx, x.transpose(1, 2))  # (B, V*S, C*H): [b, v, x, c, h]
    out = torch.bmm(t.view(b * v, s * c, height), wy.view(b * v, s, height).transpose(1, 2))  # [b, v, x, c, y]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dst = torch.empty((v * b, c, s, s), device=images.device, dtype=torch.float32, memory_format=fmt)
    dst.view(v, b, c, s, s).copy_(out.view(b, v, s, c, s).permute(1, 0, 3, 4, 2))  # one copy: view-major, layout, fp32
    return dst.clamp_(0.0, 1.0)  # bicubic overshoots; torchvision clamps to the uint8 range


# ---------------------------------------------------------------- colour ops on [0, 1] floats


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0.0, 1.0)


def select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.where(mask, a, b)` for finite floats, bit for bit. On a CPU an arithmetic blend
    (a * m + b * (1 - m), m in {0, 1}: exact): torch's CPU `where` is a branchy scalar loop, ~7x
    slower on the random masks colour ops make (5.8 vs 0.8 ms for 1.6M floats, one thread)."""
    if mask.is_cuda:
        return torch.where(mask, a, b)
    m = mask.to(a.dtype)
    return a * m + b * (1 - m)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (fraction of a turn, per sample, in [-0.5, 0.5]) through HSV.

    torchvision's conversion, written without `where` / `%` / `max(dim)` (slow on CPUs: see
    `select`); every remainder is of a value known to lie within one period, so adding or
    subtracting the period gives what `%` gives, bit for bit (tests/data: against the formula
    with `where` and `%`).
    """
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc  # = value x saturation, all the conversion back needs
    safe = delta + (delta <= 0).to(x.dtype)  # 1 where grey (delta = 0): the hue is then 0 anyway
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    # The sector's numerator and offset (r: (g - b) mod 6, g: (b - r) + 2, b: (r - g) + 4), one division.
    t = select(is_r, g - b, select(is_g, b - r, r - g)) / safe
    offset = select(is_r, 6.0 * (t < 0).to(x.dtype), select(is_g, torch.full_like(t, 2.0), torch.full_like(t, 4.0)))
    hue = (t + offset) / 6  # grey pixels: 0 / 1 + 0 = 0, as torchvision's
    hue = hue + shift.view(-1, 1, 1)  # in [-0.5, 1.5]: mod 1 by one period either way
    hue = hue - (hue >= 1).to(x.dtype) + (hue < 0).to(x.dtype)
    # HSV -> RGB without a sector table: channel n (R 5, G 3, B 1) = v - v s clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6 h) mod 6 — a few fused-friendly elementwise passes instead of an 18-plane gather.
    h6, vs = hue * 6, delta
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n  # in [1, 12): mod 6 by one period
        k = k - 6.0 * (k >= 6).to(x.dtype)
        out.append(maxc - vs * torch.minimum(k, 4 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1).clamp_(0.0, 1.0)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert the values at or above torchvision's uint8 threshold 128 (on [0, 1] floats)."""
    return select(x >= 128 / 255, 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: torch.Tensor, max_kernel: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur with reflect padding (torchvision's gaussian_blur).

    sigma, kernel_size: (N,) per sample (odd sizes <= max_kernel); smaller kernels are zero-padded
    to `max_kernel` taps, which leaves the result unchanged and the shapes static.
    """
    n, c, h, w = x.shape
    half = max_kernel // 2
    t = torch.arange(max_kernel, device=x.device, dtype=torch.float32) - half
    sig = sigma.float().view(-1, 1)
    k = torch.exp(-0.5 * (t / sig) ** 2) * (t.abs() <= (kernel_size.view(-1, 1) // 2)).float()
    k = (k / k.sum(dim=-1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, max_kernel, 1).to(x.dtype), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 1, max_kernel).to(x.dtype), groups=n * c)
    return y.view(n, c, h, w)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class BatchedMultiCrop:
    """All views of a batch of images at once, on the images' device.

    Args:
        policy: the crop policy (the same object the per-image reference uses).
        mean, std: normalisation of the output (the teacher's statistics, RGB in [0, 1]); None
            leaves [0, 1] values.
        channels_last: return channels_last tensors (what the CNN student runs fastest on).

    Call with images (B, 3, H, W) uint8 (each image's pixels at the top left, the rest padding),
    sizes (B, 2) int64 (height, width) and a seeded CPU `torch.Generator`; returns
    (globals (G * B, 3, Sg, Sg), locals (L * B, 3, Sl, Sl) or None), float32, view-major —
    the same layout the loop's normaliser produces from the CPU path's uint8 views.
    """

    def __init__(self, policy: CropPolicy, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 channels_last: bool = False) -> None:
        self.policy = policy
        self.mean, self.std = mean, std
        self.channels_last = channels_last
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.apply(images, sample_params(self.policy, sizes, generator))

    def apply(self, images: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        p = self.policy
        groups = [(slice(0, p.num_global), p.global_size)]
        if p.num_local:
            groups.append((slice(p.num_global, p.num_views), p.local_size))
        up = _Upload()
        plans = [self._plan(params, views, size, up) for views, size in groups]
        sent = up.send(images.device)  # on CUDA one pinned host->device copy: no stream syncs
        x = images.to(torch.float16 if images.is_cuda else torch.float32)  # once for every group
        with outside_autocast():  # a caller's bf16 autocast would run the blur's convolutions in bf16
            outs = [self._run(x, plan, sent, size) for plan, (_, size) in zip(plans, groups)]
        return outs[0], (outs[1] if p.num_local else None)

    def _plan(self, params: AugmentParams, views: slice, size: int, up: _Upload) -> dict:
        """Host side: which views get which op with which factor (index lists, no device work)."""
        p = self.policy

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t[views].reshape(-1, *t.shape[2:])

        boxes = params.boxes[views]
        plan: dict = {"boxes": up.add(boxes), "flip": up.add(params.flip[views]), "jitter": [],
                      "taps": (taps_for(boxes[..., 2], size), taps_for(boxes[..., 3], size))}
        jitter, factors, order = flat(params.jitter), flat(params.factors), flat(params.order)
        strengths = (p.brightness, p.contrast, p.saturation, p.hue)
        for slot in range(4):  # torchvision ColorJitter: the four ops in a random order per view
            for op in range(4):
                idx = torch.nonzero(jitter & (order[:, slot] == op)).flatten()
                if strengths[op] > 0 and len(idx):
                    plan["jitter"].append((op, up.add(idx), up.add(factors[idx, op])))
        gray, blur, solar = flat(params.gray), flat(params.blur), flat(params.solarize)
        plan["gray"] = up.add(torch.nonzero(gray).flatten()) if gray.any() else None
        plan["solar"] = up.add(torch.nonzero(solar).flatten()) if solar.any() else None
        plan["blur"] = None
        if blur.any():
            idx = torch.nonzero(blur).flatten()
            sigma = flat(params.sigma)[idx]
            max_kernel = min(2 * math.ceil(3 * p.blur_sigma[1]) + 1, 2 * (size // 2) - 1)
            ksize = torch.clamp(2 * torch.ceil(3 * sigma).long() + 1, max=max_kernel)
            plan["blur"] = (up.add(idx), up.add(sigma), up.add(ksize), max_kernel)
        return plan

    def _run(self, images: torch.Tensor, plan: dict, sent: list[torch.Tensor], size: int) -> torch.Tensor:
        """Device side: crop/resize/flip, then each op on the views that drew it."""
        dev = images.device
        x = crop_resize(images, sent[plan["boxes"]].long(), size, sent[plan["flip"]].bool(), taps=plan["taps"],
                        channels_last=self.channels_last)
        for op, idx, factor in plan["jitter"]:
            d = sent[idx].long()
            x[d] = _JITTER_OPS[op](x[d], sent[factor])
        if plan["gray"] is not None:
            d = sent[plan["gray"]].long()
            x[d] = grayscale(x[d]).expand(-1, 3, -1, -1)
        if plan["blur"] is not None:
            idx, sigma, ksize, max_kernel = plan["blur"]
            d = sent[idx].long()
            x[d] = gaussian_blur(x[d], sent[sigma], sent[ksize].long(), max_kernel)
        if plan["solar"] is not None:
            d = sent[plan["solar"]].long()
            x[d] = solarize(x[d])
        if self.mean is not None and self.std is not None:
            if dev not in self._norm:  # made once per device: a per-step host copy would sync
                self._norm[dev] = (torch.tensor(self.mean).view(1, 3, 1, 1).to(dev),
                                   torch.tensor(self.std).view(1, 3, 1, 1).to(dev))
            m, s = self._norm[dev]
            x = x.sub_(m).div_(s)  # x is this call's own tensor
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class _Upload:
    """Collects a step's small host tensors and moves them in one copy (float64 carries the
    integers exactly): many small pageable copies would each wait for the device to drain."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> int:
        self.parts.append(t)
        return len(self.parts) - 1

    def send(self, device: torch.device) -> list[torch.Tensor]:
        if device.type != "cuda":  # nothing to move: the parts as they are
            return self.parts
        shapes = [t.shape for t in self.parts]
        flat = torch.cat([t.double().reshape(-1) for t in self.parts])
        if device.type == "cuda":
            flat = flat.pin_memory().to(device, non_blocking=True)
        out, at = [], 0
        for shape in shapes:
            n = math.prod(shape)
            out.append(flat[at:at + n].view(shape).float())
            at += n
        return out
