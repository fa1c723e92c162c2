"""Backbone-only teachers (DINO `*_pretrain.pth`, timm `.dino` / DINOv2 / DINOv3 / MAE weights, plain
state_dicts): they carry no SSL head, and RoB must never invent a random one.

Two honest ways forward, chosen explicitly by the user:
- `teacher.head_checkpoint`: a DINO-layout head file (`mlp.*` + `last_layer.*`, optionally under `head.`,
  or a whole DINO training checkpoint) -> a normal prototype teacher;
- `method.name: feature`: the student regresses the teacher's L2-normalised embedding
  (`rob_ray.losses.feature`). Without either, `student_out_dim` refuses the run with one line.
"""

from __future__ import annotations

from torch import nn

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_weights, strip_prefix

__all__ = ["HeadlessTeacher", "attach_head", "load_head_checkpoint", "student_out_dim"]


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


def student_out_dim(method_name: str, teacher: Teacher) -> int:
    """Width of the student head for this method: the teacher's embedding width for the feature objective,
    else its prototype count. A headless teacher with a prototype method is refused here (never a random head)."""
    if method_name == "feature":
        return int(teacher.embed_dim)
    if not getattr(teacher, "has_ssl_head", True):
        raise TeacherLoadError(
            f"teacher '{teacher.name}' has no SSL head, so method '{method_name}' has no prototypes to match; "
            "set teacher.head_checkpoint to its head file, or use method.name=feature (embedding regression)"
        )
    return int(teacher.num_prototypes)

