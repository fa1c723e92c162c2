"""Embedding choice per architecture and the student/teacher/timm embedders."""

from __future__ import annotations

import pytest
import timm
import torch

from rob_ray.eval.embedders import EmbedSpec, build_embedder, resolve_checkpoint
from rob_ray.train.checkpoint import load_state


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True).eval()


def _manual_tokens(model, x):
    """Run the ViT block by block (independently of timm's forward_intermediates)."""
    t = model.patch_embed(x)
    t = model._pos_embed(t)
    t = model.norm_pre(t)
    outs = []
    for blk in model.blocks:
        t = blk(t)
        outs.append(t)
    return outs


def test_vit_cls_and_last4_cls_match_a_manual_forward(vit):
    x = torch.randn(2, 3, 32, 32)
    spec = EmbedSpec("timm", "vit", arch="vit_tiny_patch16_224")
    blocks = _manual_tokens(vit, x)
    with torch.no_grad():
        emb4 = build_embedder(EmbedSpec(**{**spec.__dict__, "feature": "last4_cls"}))
        emb4.model.load_state_dict(vit.state_dict())
        expected4 = torch.cat([vit.norm(b)[:, 0] for b in blocks[-4:]], dim=1)
        torch.testing.assert_close(emb4(x), expected4, rtol=1e-4, atol=1e-5)
        cls = build_embedder(EmbedSpec(**{**spec.__dict__, "feature": "cls"}))
        cls.model.load_state_dict(vit.state_dict())
        torch.testing.assert_close(cls(x), vit.norm(blocks[-1])[:, 0], rtol=1e-4, atol=1e-5)
    assert emb4(x).shape == (2, 4 * 192)


def test_cnn_pooled_is_the_mean_of_the_last_feature_map():
    emb = build_embedder(EmbedSpec("timm", "r", arch="test_resnet", feature="pooled"))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(emb(x), emb.model.forward_features(x).mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="needs a ViT with a CLS token"):
        build_embedder(EmbedSpec("timm", "r", arch="test_resnet", feature="last4_cls"))


def test_student_embedder_loads_the_checkpoint_weights(tiny_run):
    ckpt = resolve_checkpoint(tiny_run)
    state = load_state(ckpt)
    mean_std = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    trained = build_embedder(EmbedSpec("student", "s", state["config"], str(ckpt), **mean_std))
    untrained = build_embedder(EmbedSpec("student", "u", state["config"], None, **mean_std))
    for k, v in state["student"].items():
        torch.testing.assert_close(trained.model.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(trained(x), untrained(x))  # training moved the weights
    assert resolve_checkpoint(ckpt / "state.pt") == ckpt
    with pytest.raises(ValueError, match="not a run folder with checkpoints"):
        resolve_checkpoint(tiny_run / "missing")
