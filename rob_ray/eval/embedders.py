"""What to embed with: a trained or untrained student, the run's teacher, or any timm model,
and which embedding each architecture gives (plain torch; Ray actors build these once each).

Embedding choice (`feature`):
    auto       the model's own: student -> `Student.embed` (what its head reads), teacher ->
               `Teacher.embed`, timm -> `model(x)` with `num_classes=0` (CNN: pooled; ViT: CLS).
    pooled     global average of the last feature map (ViT: mean of the patch tokens).
    cls        the final-norm CLS token of a ViT.
    last4_cls  CLS tokens of the last 4 blocks, each final-normed, concatenated (N, 4 D): the DINO
               linear-eval protocol for small ViTs (Caron et al. 2021, eval_linear.py n_last_blocks=4),
               which the RoB paper uses for ViT-Tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rob_ray.errors import EvalInputError

__all__ = ["FEATURES", "EmbedSpec", "Embedder", "build_embedder", "resolve_checkpoint"]

FEATURES = ("auto", "pooled", "cls", "last4_cls")


@dataclass
class EmbedSpec:
    """A picklable recipe for an `Embedder` (shipped to Ray actors, built there once).

    kind: 'student' (weights from `state_path`; None = untrained at the config's seed),
    'teacher' (the config's teacher), 'timm' (`arch`, optional local `checkpoint`).
    config: the run's resolved config dict (student / teacher kinds).
    mean / std: input normalisation; None = the model's own (teacher's for students, timm's cfg).
    seed: random init of a timm model without a checkpoint (a reproducible random baseline).
    student: the name of one student of a multi-student run's checkpoint ("" = its `student` entry).
    """

    kind: Literal["student", "teacher", "timm"]
    name: str
    config: dict[str, Any] | None = None
    state_path: str | None = None
    arch: str | None = None
    checkpoint: str | None = None
    feature: str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    student: str = ""


class Embedder(nn.Module):
    """(N, 3, S, S) normalised images -> (N, D) frozen embedding, always in eval mode."""

    def __init__(self, model: nn.Module, feature_fn, mean: tuple[float, ...], std: tuple[float, ...],
                 name: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.feature_fn = feature_fn
        self.mean, self.std, self.name = tuple(mean), tuple(std), name

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_fn(x)


def _token_features(backbone: nn.Module, feature: str):
    """Feature function for `pooled` / `cls` / `last4_cls` on a timm backbone."""
    if feature == "pooled":
        def pooled(x: torch.Tensor) -> torch.Tensor:
            f = backbone.forward_features(x)
            if f.ndim == 4:
                return f.mean(dim=(2, 3))
            return f[:, getattr(backbone, "num_prefix_tokens", 1):].mean(1)
        return pooled
    if not hasattr(backbone, "forward_intermediates") or getattr(backbone, "cls_token", None) is None:
        raise EvalInputError(f"feature '{feature}' needs a ViT with a CLS token; {type(backbone).__name__} has none "
                         "(use feature=auto or pooled)")
    if feature == "cls":
        return lambda x: backbone.forward_features(x)[:, 0]

    def last4(x: torch.Tensor) -> torch.Tensor:
        out = backbone.forward_intermediates(x, indices=4, return_prefix_tokens=True, norm=True,
                                             intermediates_only=True)
        return torch.cat([prefix[:, 0] for _, prefix in out], dim=1)
    return last4


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or a `state.pt` file -> the checkpoint folder. Raises ValueError."""
    from rob_ray.train.launch import latest_checkpoint_dir

    p = Path(path)
    if p.is_file() and p.name == "state.pt":
        return p.parent
    if (p / "state.pt").is_file():
        return p
    if p.is_dir():
        found = latest_checkpoint_dir(p)
        if found is not None:
            return found
    raise EvalInputError(f"'{path}' is not a run folder with checkpoints, a checkpoint folder or a state.pt file; "
                     "pass --checkpoint runs/<name> or a checkpoint_step_* folder")


def build_embedder(spec: EmbedSpec, device: str | torch.device = "cpu") -> Embedder:
    """Build the frozen model of `spec` on `device` with its embedding function."""
    from rob_ray.config import Config

    if spec.feature not in FEATURES:
        raise EvalInputError(f"feature '{spec.feature}' is unknown; choose one of {', '.join(FEATURES)}")
    if spec.kind == "timm":
        import timm

        from rob_ray.models.teachers.timm_teacher import create_timm_backbone

        torch.manual_seed(spec.seed)  # every actor builds the same random weights
        model = create_timm_backbone(spec.arch or "", checkpoint=spec.checkpoint)
        cfg = timm.data.resolve_data_config({}, model=model)
        mean, std = spec.mean or tuple(cfg["mean"]), spec.std or tuple(cfg["std"])
        fn = model if spec.feature == "auto" else _token_features(model, spec.feature)
        return Embedder(model, fn, mean, std, spec.name).to(device)
    cfg = Config.model_validate(spec.config or {})
    if spec.kind == "teacher":
        from rob_ray.models import build_teacher

        teacher = build_teacher(cfg.teacher)
        fn = teacher.embed if spec.feature == "auto" else _token_features(teacher.backbone, spec.feature)
        return Embedder(teacher, fn, spec.mean or teacher.mean, spec.std or teacher.std, spec.name).to(device)
    if spec.kind != "student":
        raise ValueError(f"embedder kind '{spec.kind}' is unknown; choose student, teacher or timm")
    if spec.mean is None or spec.std is None:
        raise ValueError("a student embedder needs the teacher's mean/std in its spec (see eval.runner.student_spec)")
    if spec.state_path is not None:
        from rob_ray.methods import restore_student
        from rob_ray.train.checkpoint import load_state

        # Exactly the network training built (the method's registry entry restores it), loaded strictly.
        state = load_state(spec.state_path)
        entries = state.get("students") or {}
        student = restore_student(cfg, entries[spec.student]["student"] if spec.student in entries else state["student"])
    else:
        from rob_ray.models.students import Student, build_backbone

        torch.manual_seed(cfg.seed)  # untrained: the run's step-0 backbone (built first, from the seed alone)
        student = Student(build_backbone(cfg.student), nn.Identity(), cfg.student.feature)
    fn = student.embed if spec.feature == "auto" else _token_features(student.backbone, spec.feature)
    return Embedder(student, fn, spec.mean, spec.std, spec.name).to(device)
