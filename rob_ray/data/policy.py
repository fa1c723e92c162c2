"""Multi-crop policy: what views a method asks for (sizes, scales, colour ops, probabilities)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rob_ray.config import AugmentConfig

__all__ = ["CropPolicy", "build_policy"]


@dataclass(frozen=True)
class CropPolicy:
    """Defaults are DINO's DataAugmentationDINO: 2 x 224 [0.4, 1] + 10 x 96 [0.05, 0.4].

    Probability triples are (first global view, other global views, local views).
    """

    num_global: int = 2
    num_local: int = 10
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float, float] = (0.0, 0.2, 0.0)
    # Where the crops are made: "worker" = Ray Data actors read, decode and shrink each image (longer
    # side at most `image_size`) and draw its views' random choices; the training worker crops the
    # batch at once on its own device (CPU or GPU). "data_actors" = the actors make uint8 views per image.
    crops_on: str = "worker"
    image_size: int = 256

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local

    def view_kind(self, v: int) -> int:
        """0 = first global, 1 = other global, 2 = local (indexes the probability triples)."""
        if v == 0:
            return 0
        return 1 if v < self.num_global else 2


def build_policy(cfg: AugmentConfig, use_gpu: bool = False) -> CropPolicy:
    fields = CropPolicy.__dataclass_fields__
    values = {k: v for k, v in cfg.model_dump().items() if k in fields}
    from rob_ray.config import resolve_crops_on  # an AugmentConfig means pydantic is here

    values["crops_on"] = resolve_crops_on(values["crops_on"], use_gpu)
    return CropPolicy(**values)
