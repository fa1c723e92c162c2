"""Batches -> Views for both crop placements: the worker's batched crops against the actors'
per-image views for the same draws, determinism, the one rule for unreadable images, and the
one-step-ahead stream (its CUDA side-stream path shares this code; on CPU it runs in order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rob_ray.data import CropPolicy, MultiCropMapper, SampleSchedule, scan_images
from rob_ray.data.multicrop import MultiCropAugment, draw_views, sample_seed
from rob_ray.data.views import ViewsBuilder, ViewStream, stand_in_rows
from tests.conftest import DEMO_DATA

RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: both placements give [0, 1] values


def _policy(crops_on: str, **kw) -> CropPolicy:
    return CropPolicy(global_size=32, local_size=16, num_local=3, crops_on=crops_on, image_size=128, **kw)


def _batches(table, crops_on: str, steps: int = 2, batch: int = 8, **kw):
    policy = _policy(crops_on, **kw)
    mapper = MultiCropMapper(table, policy, SampleSchedule(len(table), 1, batch, 1), 0)
    return policy, list(mapper.iter_local(0, steps))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_worker_crops_match_the_actor_views_for_the_same_draws(small_folder, one_thread):
    """Same images, same per-image draws, same batched crop code: the data actors' uint8 views are
    the worker's float views rounded to the nearest level (at most half a level apart)."""
    table = scan_images(small_folder)
    pw, worker = _batches(table, "worker")
    pa, actors = _batches(table, "data_actors")
    build_w, build_a = ViewsBuilder(pw, *RAW, "cpu"), ViewsBuilder(pa, *RAW, "cpu")
    for bw, ba in zip(worker, actors):
        assert np.array_equal(bw["image_index"], ba["image_index"])
        vw, va = build_w(bw).views, build_a(ba).views
        for a, b in ((vw.globals_, va.globals_), (vw.locals_, va.locals_)):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) <= 0.5 / 255 + 1e-6
            assert torch.equal(b, torch.round(a * 255) / 255)


def test_actor_views_follow_the_per_image_reference(small_folder, one_thread):
    """The data actors' views against torchvision's per-image ops (`MultiCropAugment`) with the
    same draws on the same shrunk images: each reference op rounds to uint8, the batched path once."""
    table = scan_images(small_folder)
    policy, (batch,) = _batches(table, "data_actors", steps=1)
    ref = MultiCropAugment(policy)
    mapper = MultiCropMapper(table, policy, SampleSchedule(len(table), 1, 8, 1), 0)
    loaded = mapper._load(batch["epoch"], batch["image_index"])
    for i in range(8):
        h, w = loaded["size"][i]
        image = np.ascontiguousarray(loaded["image"][i, :, :h, :w].transpose(1, 2, 0))
        rg, rl = ref.apply(image, loaded["draws"][i])
        for ours, theirs in ((batch["global"][i], rg), (batch["local"][i], rl)):
            d = (torch.from_numpy(ours).float() - theirs.float()).abs() / 255
            assert float(d.mean()) < 1e-2 and float((d > 0.05).float().mean()) < 2e-2, float(d.mean())


def test_batched_apply_equals_the_reference_ops_on_given_draws(one_thread):
    """A photo through the per-image reference with its draws vs the batched path with the same
    draws, every op switched on (each reference op rounds to uint8: up to ~2.5 levels apart on average)."""
    from rob_ray.data.batched_augment import BatchedMultiCrop, params_from_draws
    from rob_ray.data.decode import decode_rgb

    files = sorted((DEMO_DATA / "train").rglob("*.JPEG"))[::97][:6]
    imgs = [decode_rgb(f.read_bytes()) for f in files]
    policy = CropPolicy(global_size=40, local_size=24, num_local=2, color_jitter_prob=1.0, blur_prob=(1.0, 1.0, 1.0),
                        grayscale_prob=0.3, solarize_prob=(0.0, 0.5, 0.0))
    draws = np.stack([draw_views(sample_seed(3, 0, i), *img.shape[:2], policy) for i, img in enumerate(imgs)])
    canvas = torch.stack([torch.from_numpy(img).permute(2, 0, 1) for img in imgs])
    g, loc = BatchedMultiCrop(policy).apply(canvas, params_from_draws(draws))
    ref = MultiCropAugment(policy)
    for i, img in enumerate(imgs):
        rg, rl = ref.apply(img, draws[i])
        assert torch.equal(rg, ref(img, sample_seed(3, 0, i))[0])  # the draws are the reference's own
        for v in range(2):
            d = (g[v * len(imgs) + i] - rg[v].float() / 255).abs()
            assert float(d.mean()) < 1e-2 and float((d > 0.05).float().mean()) < 1e-2
        for v in range(2):
            d = (loc[v * len(imgs) + i] - rl[v].float() / 255).abs()
            assert float(d.mean()) < 1e-2 and float((d > 0.05).float().mean()) < 1e-2


@pytest.mark.parametrize("crops_on", ["worker", "data_actors"])
def test_views_are_deterministic_and_normalised_view_major(small_folder, crops_on):
    table = scan_images(small_folder)
    policy, batches = _batches(table, crops_on, steps=1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    build = ViewsBuilder(policy, mean, std, "cpu", channels_last=True)
    a, b = build(batches[0]), build(batches[0])
    assert torch.equal(a.views.globals_, b.views.globals_) and torch.equal(a.views.locals_, b.views.locals_)
    assert a.views.globals_.shape == (2 * 8, 3, 32, 32) and a.views.locals_.shape == (3 * 8, 3, 16, 16)
    assert a.views.globals_.is_contiguous(memory_format=torch.channels_last)
    assert a.row_weight is None and a.n_bad == 0 and a.loss_weight == 1.0
    assert a.views.labels.tolist() == batches[0]["label"].tolist()
    # Another step of the same batch composition draws other views.
    _, again = _batches(table, crops_on, steps=2)
    assert not torch.equal(build(again[1]).views.globals_, a.views.globals_)


@pytest.mark.parametrize("crops_on", ["worker", "data_actors"])
def test_unreadable_images_keep_the_batch_shape_with_zero_weight(small_folder, crops_on):
    table = scan_images(small_folder)
    policy, (batch,) = _batches(table, crops_on, steps=1)
    valid = np.ones(8, dtype=bool)
    valid[[1, 5]] = False
    broken = {**batch, "valid": valid}
    built = ViewsBuilder(policy, *RAW, "cpu")(broken)
    v = built.views
    assert built.n_bad == 2 and built.loss_weight == 1.0
    assert v.globals_.shape == (2 * 8, 3, 32, 32) and v.locals_.shape == (3 * 8, 3, 16, 16) and v.batch_size == 8
    assert built.row_weight.tolist() == pytest.approx([8 / 6, 0, 8 / 6, 8 / 6, 8 / 6, 0, 8 / 6, 8 / 6])
    assert v.labels[1] == v.labels[5] == -1 and v.labels[0] == batch["label"][0]
    # The stand-ins are readable rows of the same batch (rows 0 and 2): real pixels, not zeros.
    g = v.globals_.view(2, 8, 3, 32, 32)
    assert torch.equal(g[:, 1], g[:, 0]) and torch.equal(g[:, 5], g[:, 2])
    nothing = ViewsBuilder(policy, *RAW, "cpu")({**batch, "valid": np.zeros(8, dtype=bool)})
    assert nothing.loss_weight == 0.0 and nothing.row_weight is None and nothing.views.globals_.shape[0] == 16


def test_stand_in_rows():
    assert stand_in_rows(np.array([True, True])) is None and stand_in_rows(np.array([False, False])) is None
    assert stand_in_rows(np.array([False, True, False, True, False])).tolist() == [1, 1, 3, 3, 1]


def test_view_stream_prefetches_one_step_ahead_on_cpu(small_folder):
    table = scan_images(small_folder)
    policy, batches = _batches(table, "worker", steps=3)
    build = ViewsBuilder(policy, *RAW, "cpu")
    pulled = []

    def source():
        for b in batches:
            pulled.append(b)
            yield b

    stream = ViewStream(source(), build)
    first = next(stream)
    assert len(pulled) == 1
    stream.prefetch()  # what the step calls once the teacher's forward is queued
    stream.prefetch()  # idempotent until the prepared views are taken
    assert len(pulled) == 2
    got = [first, *stream]
    assert len(got) == 3
    for built, batch in zip(got, batches):
        assert torch.equal(built.views.globals_, build(batch).views.globals_)
    with pytest.raises(StopIteration):
        next(stream)
