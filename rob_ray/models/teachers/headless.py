"""Backbone-only teachers (DINO `*_pretrain.pth`, timm `.dino` / DINOv2 / DINOv3 / MAE weights, plain
state_dicts): they carry no SSL head, and RoB must never invent a random one.

Two honest ways forward, chosen explicitly by the user:
- `teacher.head_checkpoint`: a DINO-layout head file (`mlp.*` + `last_layer.*`, optionally under `head.`,
  or a whole DINO training checkpoint) -> a normal prototype teacher;
- `teacher.prototypes`: prototypes fitted on the user's data (spherical k-means of the teacher's
  embeddings, `rob_ray.prototypes`), saved in the same DINO head layout; `with_fitted_head` puts them
  on any plain backbone teacher (also one with its own classifier, which they then replace);
- `method.name: feature`: the student regresses the teacher's L2-normalised embedding
  (`rob_ray.losses.feature`). Without either, `student_out_dim` refuses the run with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_weights, strip_prefix

__all__ = ["HeadlessTeacher", "apply_prototypes", "attach_head", "load_head_checkpoint", "student_out_dim",
           "with_fitted_head"]


class HeadlessTeacher(Teacher):
    """A frozen backbone without SSL head: `forward` returns the (N, D) embedding, `num_prototypes` is 0."""

    has_ssl_head = False

    def __init__(self, backbone: nn.Module, *, embed_dim: int, **kwargs) -> None:
        super().__init__(backbone, nn.Identity(), num_prototypes=0, embed_dim=embed_dim, **kwargs)


def load_head_checkpoint(path: str, in_dim: int):
    """A DINOHead (shape read from the tensors) from a head file. Raises TeacherLoadError (one line)."""
    from rob_ray.models.teachers.dino import dino_head_from_state

    obj = load_weights(path)
    state = strip_prefix(find_state_dict(obj, "teacher", "head", "state_dict", "model"), "module.")
    if any(k.startswith("head.") for k in state):
        state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    head = dino_head_from_state(state, f"teacher.head_checkpoint '{path}'")
    if head.in_dim != in_dim:
        raise TeacherLoadError(
            f"teacher.head_checkpoint '{path}' expects {head.in_dim}-d features but the backbone gives {in_dim}-d; "
            "use the head trained with this backbone"
        )
    return head


def attach_head(backbone: nn.Module, cfg, *, embed_dim: int, **kwargs) -> Teacher:
    """`cfg.head_checkpoint` -> Teacher with that head; else a HeadlessTeacher (feature objective only)."""
    if getattr(cfg, "head_checkpoint", None):
        head = load_head_checkpoint(cfg.head_checkpoint, embed_dim)
        return Teacher(backbone, head, num_prototypes=head.out_dim, embed_dim=embed_dim, **kwargs)
    return HeadlessTeacher(backbone, embed_dim=embed_dim, **kwargs)


def with_fitted_head(teacher: Teacher, path: str) -> Teacher:
    """`teacher`'s backbone with the fitted head file `path` as its head (its own head, if any, is dropped).

    Only plain backbone teachers qualify: iBOT / MSN / SwAV teachers carry method-specific heads
    (patch head, projector) that a prototype layer cannot stand in for. A checksum recorded in the
    `fit.json` beside the head is checked. Raises TeacherLoadError (one line).
    """
    if type(teacher) not in (Teacher, HeadlessTeacher):
        raise TeacherLoadError(
            f"teacher.prototypes: teacher '{teacher.name}' ({type(teacher).__name__}) brings its own method-specific "
            "heads; fitted prototypes are for backbone teachers (kind timm, dino, state_dict, efficientnet_lite0)"
        )
    meta_path = Path(path).with_name("fit.json")
    if meta_path.is_file() and Path(path).is_file():
        from rob_ray.train.checkpoint import file_sha256

        try:
            want = json.loads(meta_path.read_text()).get("sha256")
        except (OSError, ValueError):
            want = None
        if want and file_sha256(path) != want:
            raise TeacherLoadError(f"teacher.prototypes.head '{path}' does not match its checksum in {meta_path.name}; "
                                   "delete its folder and fit again")
    head = load_head_checkpoint(path, teacher.embed_dim)
    return Teacher(teacher.backbone, head, num_prototypes=head.out_dim, embed_dim=teacher.embed_dim, mean=teacher.mean,
                   std=teacher.std, name=f"{teacher.name.split(' (')[0]} + {head.out_dim} fitted prototypes",
                   patch_size=teacher.patch_size)


def apply_prototypes(teacher: Teacher, cfg) -> Teacher:
    """The registry's hook: `cfg.prototypes.head` -> `with_fitted_head`; `prototypes.fit` without a head
    yet -> one line saying how to fit them (a teacher never gets a random head)."""
    protos = getattr(cfg, "prototypes", None)
    if protos is None:
        return teacher
    if protos.head:
        return with_fitted_head(teacher, protos.head)
    raise TeacherLoadError(
        "teacher.prototypes.fit: the prototypes are not fitted yet; run `experiments/run.py fit-prototypes --config ...` "
        "(or train, which fits them first)"
    )


def student_out_dim(method_name: str, teacher: Teacher) -> int:
    """Width of the student head for this method: the teacher's embedding width for the feature objective,
    else its prototype count. A headless teacher with a prototype method is refused here (never a random head)."""
    if method_name == "feature":
        return int(teacher.embed_dim)
    if not getattr(teacher, "has_ssl_head", True):
        raise TeacherLoadError(
            f"teacher '{teacher.name}' has no SSL head, so method '{method_name}' has no prototypes to match; "
            "set teacher.head_checkpoint to its head file, fit prototypes with teacher.prototypes.fit: {k: ...}, "
            "or use method.name=feature (embedding regression)"
        )
    return int(teacher.num_prototypes)

