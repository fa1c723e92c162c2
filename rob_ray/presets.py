"""Per-method multi-crop presets (`augment.policy`), as published by each method's authors.

- dino: main_dino.py DataAugmentationDINO — 2 x 224 [0.4, 1] + 10 x 96 [0.05, 0.4], jitter (0.4, 0.4, 0.2, 0.1),
  blur 1.0 / 0.1 / 0.5, solarize on the second global view.
- ibot: the same colour ops with iBOT's scales — 2 x 224 [0.25, 1] + 10 x 96 [0.05, 0.25].
- msn: src/data_manager.py make_transforms — 2 x 224 [0.3, 1] + 10 x 96 [0.05, 0.3], colour strength s = 1.0
  (jitter 0.8s, 0.8s, 0.8s, 0.2s), blur p 0.5 on every view, no solarize.
- swav: src/multicropdataset.py — 2 x 224 [0.14, 1] + 4 x 96 [0.05, 0.14], the same colour ops as MSN.

Combination rule: a field the user sets explicitly wins; every other field takes the preset value.
When only `global_size` is set, the local size is scaled by the preset's 96/224 ratio and rounded
to a multiple of `size_multiple` (default 16, the ViT patch size), so 112 gives 48.
Plain Python (no torch): the config validates with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "resolve_preset"]

_DINO_COLOUR: dict[str, Any] = {
    "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "color_jitter_prob": 0.8,
    "grayscale_prob": 0.2, "blur_prob": (1.0, 0.1, 0.5), "solarize_prob": (0.0, 0.2, 0.0), "flip_prob": 0.5,
}
_SIMCLR_COLOUR: dict[str, Any] = {  # get_color_distortion(s=1.0) + GaussianBlur(p=0.5), no solarize
    "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "color_jitter_prob": 0.8,
    "grayscale_prob": 0.2, "blur_prob": (0.5, 0.5, 0.5), "solarize_prob": (0.0, 0.0, 0.0), "flip_prob": 0.5,
}


def _crops(num_local: int, split: float, global_lo: float) -> dict[str, Any]:
    return {"num_global": 2, "num_local": num_local, "global_size": 224, "local_size": 96,
            "global_scale": (global_lo, 1.0), "local_scale": (0.05, split)}


PRESETS: dict[str, dict[str, Any]] = {
    "dino": {**_crops(10, 0.4, 0.4), **_DINO_COLOUR},
    "ibot": {**_crops(10, 0.25, 0.25), **_DINO_COLOUR},
    "msn": {**_crops(10, 0.3, 0.3), **_SIMCLR_COLOUR},
    "swav": {**_crops(4, 0.14, 0.14), **_SIMCLR_COLOUR},
}


def scaled_local_size(global_size: int, preset: dict[str, Any], multiple: int) -> int:
    """The preset's local/global size ratio applied to `global_size`, rounded to `multiple` (>= one multiple)."""
    raw = global_size * preset["local_size"] / preset["global_size"]
    return max(multiple, round(raw / multiple) * multiple)


def resolve_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields missing from a raw `augment` mapping with the preset named by `data['policy']`."""
    name = data["policy"]
    preset = PRESETS.get(name)
    if preset is None:
        return data  # the Literal check reports the bad name with the allowed ones
    out = dict(data)
    for key, value in preset.items():
        out.setdefault(key, value)
    if "global_size" in data and "local_size" not in data:
        out["local_size"] = scaled_local_size(int(data["global_size"]), preset, int(data.get("size_multiple", 16)))
    return out
