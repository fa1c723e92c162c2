"""Multi-crop presets: each method's published values; explicit fields win; sizes scale cleanly."""

from __future__ import annotations

import pytest

from rob_ray.config import AugmentConfig, ConfigError, load_config, save_config
from rob_ray.data import build_policy

PUBLISHED = {  # (num_global, global_scale, num_local, local_scale, brightness, solarize second global)
    "dino": (2, (0.4, 1.0), 10, (0.05, 0.4), 0.4, 0.2),
    "ibot": (2, (0.25, 1.0), 10, (0.05, 0.25), 0.4, 0.2),
    "msn": (2, (0.3, 1.0), 10, (0.05, 0.3), 0.8, 0.0),
    "swav": (2, (0.14, 1.0), 4, (0.05, 0.14), 0.8, 0.0),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_values(name):
    a = load_config(None, [f"augment.policy={name}"]).augment
    got = (a.num_global, a.global_scale, a.num_local, a.local_scale, a.brightness, a.solarize_prob[1])
    assert got == PUBLISHED[name]
    assert (a.global_size, a.local_size) == (224, 96)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_small_images_scale_to_patch_multiples(name):
    a = load_config(None, [f"augment.policy={name}", "augment.global_size=112"]).augment
    assert (a.global_size, a.local_size) == (112, 48)
    b = load_config(None, [f"augment.policy={name}", "augment.global_size=80"]).augment
    assert b.local_size == 32 and b.local_size % 16 == 0  # 80 * 96 / 224 = 34.3 -> nearest multiple of 16
    c = load_config(None, [f"augment.policy={name}", "augment.global_size=80", "augment.size_multiple=1"]).augment
    assert c.local_size == 34


def test_explicit_fields_win_over_the_preset():
    a = load_config(None, ["augment.policy=swav", "augment.num_local=6", "augment.local_scale=[0.1, 0.2]",
                           "augment.local_size=40", "augment.global_size=80"]).augment
    assert (a.num_local, a.local_scale, a.local_size, a.global_size) == (6, (0.1, 0.2), 40, 80)
    assert a.global_scale == (0.14, 1.0) and a.brightness == 0.8  # untouched fields still follow the preset
    assert build_policy(a).num_local == 6


def test_custom_is_dino_and_keeps_explicit_values():
    custom, dino = AugmentConfig(), load_config(None, ["augment.policy=dino"]).augment
    # crops_on: `auto` on a bare section, resolved for the workers' device in a whole config
    assert custom.crops_on == "auto" and dino.crops_on == "data_actors"
    assert custom.model_dump(exclude={"policy", "crops_on"}) == dino.model_dump(exclude={"policy", "crops_on"})
    assert load_config(None, ["augment.local_scale=[0.05, 0.2]"]).augment.local_scale == (0.05, 0.2)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["augment.policy=msn", "augment.global_size=112"])
    again = load_config(save_config(cfg, tmp_path / "c.yaml"))
    assert again.augment == cfg.augment


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"augment.policy.*'swav'"):
        load_config(None, ["augment.policy=simclr"])
