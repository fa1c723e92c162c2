"""Small teacher checkpoints in each method's OFFICIAL file layout, keyed by registered method and by
teacher kind (tests only; written from random weights, never downloaded).

`METHOD_TEACHERS[name](folder)` -> the overrides that point a config at a fixture teacher for that method;
a method registered without an entry here fails `test_every_registered_method_has_a_fixture`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch

from tests.helpers_ckpt import write_dino_checkpoint, write_swav_checkpoint, write_timm_classifier
from tests.ssl_checkpoints import write_ibot_checkpoint, write_msn_checkpoint


def dino_teacher(folder: Path) -> list[str]:
    """DINO full checkpoint {teacher: backbone.* + head.*, args} on a test ViT, 32 prototypes."""
    return ["teacher.kind=dino", "teacher.arch=test_vit",
            f"teacher.checkpoint={write_dino_checkpoint(folder / 'dino_full_checkpoint.pth')}"]


def dino_backbone_teacher(folder: Path) -> list[str]:
    """DINO backbone-only `*_pretrain.pth` layout (bare timm keys): no SSL head."""
    path = folder / "dino_resnet50_pretrain.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    return ["teacher.kind=dino", "teacher.arch=test_resnet", f"teacher.checkpoint={path}"]


def ibot_teacher(folder: Path) -> list[str]:
    path = folder / "checkpoint.pth"
    write_ibot_checkpoint(path, k=32, hidden=48, bottleneck=24)
    return ["teacher.kind=ibot", "teacher.arch=test_vit", f"teacher.checkpoint={path}"]


def msn_teacher(folder: Path) -> list[str]:
    path = folder / "vits16_800ep.pth.tar"
    write_msn_checkpoint(path, timm_arch="test_vit", k=24, hidden=48, out=16)  # 24 prototypes of dimension 16
    return ["teacher.kind=msn", "teacher.arch=test_vit", f"teacher.checkpoint={path}"]


def swav_teacher(folder: Path) -> list[str]:
    path = write_swav_checkpoint(folder / "swav_800ep_pretrain.pth.tar", k=32, dim=16)  # 32 prototypes of dim 16
    return ["teacher.kind=swav", f"teacher.checkpoint={path}"]


def classifier_teacher(folder: Path) -> list[str]:
    """A supervised 10-class classifier's state_dict (timm layout) as a KD teacher."""
    path = write_timm_classifier(folder / "resnet_supervised.pth", num_classes=10)
    return ["teacher.kind=timm", "teacher.arch=test_resnet", f"teacher.checkpoint={path}"]


# method -> (teacher fixture or None, student arch at test size, method-specific overrides)
METHOD_TEACHERS: dict[str, tuple[Callable[[Path], list[str]] | None, str, list[str]]] = {
    "dino": (dino_teacher, "test_resnet", []),
    "feature": (dino_backbone_teacher, "test_resnet", []),
    "ibot": (ibot_teacher, "test_vit", ["student.head.num_layers=2"]),
    "msn": (msn_teacher, "test_vit", ["method.projector_hidden_dim=32"]),
    "swav": (swav_teacher, "test_resnet", []),
    "kd": (classifier_teacher, "test_resnet", []),
    "dino_scratch": (None, "test_resnet", ["method.out_dim=64"]),
}

# teacher.kind of a shipped recipe -> a fixture in that kind's layout (efficientnet_lite0 ships offline)
KIND_TEACHERS: dict[str, Callable[[Path], list[str]]] = {
    "dino": dino_teacher, "ibot": ibot_teacher, "msn": msn_teacher, "swav": swav_teacher, "timm": classifier_teacher,
}


def method_overrides(method: str, folder: Path) -> list[str]:
    """`method.name` + its fixture teacher + a test-size student for `method`."""
    teacher, student, extra = METHOD_TEACHERS[method]
    folder.mkdir(parents=True, exist_ok=True)
    return [f"method={{name: {method}}}", f"student.arch={student}", "student.drop_path_rate=0",
            *(teacher(folder) if teacher is not None else []), *extra]
