"""Feature extraction as Ray Data batch inference equals the direct forward (starts a local Ray)."""

from __future__ import annotations

import pytest
import torch

from rob_ray.data import scan_images
from rob_ray.eval.embedders import EmbedSpec, build_embedder, resolve_checkpoint
from rob_ray.eval.features import extract_features
from rob_ray.train.checkpoint import load_state

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_local():
    import ray

    from rob_ray.config import load_config
    from rob_ray.train.launch import init_ray

    init_ray(load_config(None, ["scaling.ray_num_cpus=2"]))  # workers import this checkout's rob_ray
    yield
    ray.shutdown()


def test_ray_features_equal_direct_forward(tiny_run, labelled_root, ray_local):
    from rob_ray.eval.ray_features import ray_extract_features

    ckpt = resolve_checkpoint(tiny_run)
    table = scan_images(labelled_root / "val")  # 20 images; batch 8 -> 3 blocks
    specs = [EmbedSpec("student", "s", load_state(ckpt)["config"], str(ckpt), mean=(0.5,) * 3, std=(0.5,) * 3),
             EmbedSpec("timm", "vit", arch="vit_tiny_patch16_224", feature="last4_cls")]
    for spec in specs:
        got, labels = ray_extract_features(spec, table, 32, batch_size=8, num_actors=1, cpus_per_actor=1)
        emb = build_embedder(spec)
        want, want_labels = extract_features(emb, table, 32, emb.mean, emb.std, batch_size=8)
        assert torch.equal(labels, want_labels) and labels.tolist() == table.labels.tolist()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
