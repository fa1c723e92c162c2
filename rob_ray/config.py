"""One strict config tree for every rob_ray entry point.

The same `Config` drives the CLI, the Python API, Ray scaling and (later) the Tune search
space. It is validated once, before any Ray work starts, and saved resolved into the run
folder. Errors are turned into one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rob_ray.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DebugConfig",
    "DinoMethodConfig",
    "EvalConfig",
    "FeatureMethodConfig",
    "HeadConfig",
    "IbotMethodConfig",
    "KDMethodConfig",
    "MsnMethodConfig",
    "OptimConfig",
    "PrototypeFitConfig",
    "PrototypesConfig",
    "RunConfig",
    "ScalingConfig",
    "ScratchDinoMethodConfig",
    "StudentConfig",
    "StudentEntry",
    "SwavMethodConfig",
    "TeacherConfig",
    "TuneConfig",
    "apply_overrides",
    "load_config",
    "save_config",
    "student_configs",
]


class StrictModel(BaseModel):
    # allow_inf_nan=False: `optim.lr=.inf` (or nan anywhere) is refused here, not trained on.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Range = tuple[float, float]


class DataConfig(StrictModel):
    """Where the unlabelled images come from and how they are streamed."""

    path: str = Field("experiments/demo_data/train", description="ImageFolder root, image folder, or Parquet file/folder")
    format: Literal["auto", "imagefolder", "parquet"] = "auto"
    parquet_image_column: str = Field("image", description="Parquet column holding encoded bytes or file paths")
    parquet_label_column: str | None = None
    max_images: int | None = Field(None, gt=0, description="use only the first N images (after sorting)")
    num_actors: int | None = Field(None, ge=1, description="Ray Data actors per training worker (default: the launch "
                                   "plan sizes them to the decode work, see --dry-run)")
    cpus_per_actor: float | None = Field(None, gt=0, description="default: the launch plan (a fraction of a CPU on a "
                                         "small node)")
    actor_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per augmentation actor, e.g. {data_cpu: 1} to keep "
        "decoding on the CPU-only nodes that advertise it (cluster/*.yaml)")
    prefetch_batches: int = Field(2, ge=0)
    max_batches_ahead: int | None = Field(
        None, ge=1, description="cap on batches the data actors may run ahead of the step (object-store bytes per "
        "worker); null = Ray Data's budget, half the object store. A cap keeps a long run's rate what its first "
        "minutes show (experiments/benchmark_accuracy.yaml); without it a short run decodes everything up front")
    eval_path: str | None = Field(None, description="labelled ImageFolder for k-NN after training (train/val split inside)")


class AugmentConfig(StrictModel):
    """Multi-crop policy. Defaults are DINO's (Caron et al. 2021, main_dino.py DataAugmentationDINO).

    `policy` picks a per-method preset (rob_ray/presets.py): every field the user did not set takes the
    preset's value, every field the user set wins. A preset's local size follows an explicit
    `global_size` (224/96 -> 112/48), rounded to a multiple of `size_multiple` (the ViT patch size).
    """

    policy: Literal["custom", "dino", "ibot", "msn", "swav"] = "custom"
    size_multiple: int = Field(16, ge=1, description="preset-derived crop sizes are rounded to this multiple")
    num_global: int = Field(2, ge=1)
    num_local: int = Field(10, ge=0)
    global_size: int = Field(224, ge=8)
    local_size: int = Field(96, ge=8)
    global_scale: Range = (0.4, 1.0)
    local_scale: Range = (0.05, 0.4)
    ratio: Range = (3 / 4, 4 / 3)
    flip_prob: float = Field(0.5, ge=0, le=1)
    color_jitter_prob: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    # DINO: first global view always blurred, second 10 %, locals 50 %; solarize second global only.
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: Range = (0.1, 2.0)
    solarize_prob: tuple[float, float, float] = (0.0, 0.2, 0.0)
    crops_on: Literal["auto", "worker", "data_actors"] = Field(
        "auto", description="where the crops are made: worker = batched in the training worker, on its device "
        "(Ray Data actors only read, decode, shrink and draw); data_actors = batched in each Ray Data actor, "
        "shipped as uint8 views; auto = "
        "worker on GPU workers, data_actors on CPU workers (the faster of the two on each, measured)")
    image_size: int = Field(256, ge=8, description="images are shrunk to fit this square (never enlarged) before "
                            "they are cropped (crops_on=worker: before they travel to the worker)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("device" in data or "gpu_image_size" in data):
            data = _migrate_augment_device(data)
        if isinstance(data, dict) and data.get("policy", "custom") != "custom":
            from rob_ray.presets import resolve_preset

            return resolve_preset(data)
        return data

    @field_validator("global_scale", "local_scale", "ratio", "blur_sigma")
    @classmethod
    def _ordered_range(cls, v: Range) -> Range:
        lo, hi = v
        if not (0 < lo <= hi):
            raise ValueError(f"must be (low, high) with 0 < low <= high, got {list(v)}")
        return v

    @field_validator("blur_prob", "solarize_prob")
    @classmethod
    def _probabilities(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 <= p <= 1 for p in v):
            raise ValueError(f"each probability (first global, other globals, locals) must be in [0, 1], got {list(v)}")
        return v

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale_at_most_one(cls, v: Range) -> Range:
        if v[1] > 1:
            raise ValueError(f"crop scale is a fraction of the image area; high must be <= 1, got {v[1]}")
        return v


class PrototypeFitConfig(StrictModel):
    """Fit K prototypes for a teacher without (or instead of) its own head: spherical k-means of its
    L2-normalised embeddings of a seeded sample of data.path (rob_ray/prototypes)."""

    k: int = Field(8192, ge=2, description="number of prototypes K (the student head's width)")
    images: int = Field(50000, ge=2, description="images sampled from data.path to embed (all when it has fewer)")
    seed: int = Field(0, description="seeds the image sample, the init and empty-cluster re-seeding")
    iterations: int = Field(20, ge=0, le=1000, description="at most this many k-means iterations")
    init: Literal["auto", "kmeans++", "random"] = Field(
        "auto", description="auto: k-means++ up to K=4096, a seeded draw of distinct points above")
    size: int | None = Field(None, ge=8, description="embedding crop side (default augment.global_size; centre crop)")
    engine: Literal["ray", "local"] = Field("ray", description="ray: Ray Data batch inference; local: one process")
    batch_size: int = Field(128, ge=1)
    num_actors: int = Field(1, ge=1, description="embedding actors (engine=ray); each takes a GPU when the cluster has them")

    @model_validator(mode="after")
    def _k_fits_sample(self) -> PrototypeFitConfig:
        if self.k > self.images:
            raise ValueError(f"k ({self.k}) exceeds images ({self.images}): k-means needs at least one image per "
                             "prototype; raise images or lower k")
        return self


class PrototypesConfig(StrictModel):
    """Fitted prototypes for the teacher: `fit` fits them (cached), `head` names a fitted head file."""

    fit: PrototypeFitConfig | None = None
    head: str | None = Field(None, description="a fitted head file (set by rob_ray after fitting; or one written by "
                             "`experiments/run.py fit-prototypes`); replaces the teacher's own head")
    cache_dir: str | None = Field(None, description="where fits are cached (default <run.storage_path>/prototypes)")

    @model_validator(mode="after")
    def _something_to_do(self) -> PrototypesConfig:
        if self.fit is None and not self.head:
            raise ValueError("needs fit: {k: ..., images: ...} (to fit prototypes) or head: <a fitted head file>")
        return self


def resolve_crops_on(crops_on: str, use_gpu: bool) -> str:
    """`augment.crops_on=auto`: the placement measured fastest for the workers' device. On a GPU the
    batched crops in the worker (on a side stream) beat per-image CPU crops by far; on CPU workers
    the actors' per-image crops run beside the step, while batched crops in the worker run in
    series with it (2 cores, demo config: 68 vs 63 img/s, `experiments/bench_pipeline.py`)."""
    if crops_on != "auto":
        return crops_on
    return "worker" if use_gpu else "data_actors"


_DEVICE_TO_CROPS_ON = {"cpu": "data_actors", "gpu": "worker"}


def _migrate_augment_device(data: dict[str, Any]) -> dict[str, Any]:
    """`augment.device: cpu|gpu` (and `gpu_image_size`) before `augment.crops_on` / `image_size` existed:
    the same placement under the new name (old run folders keep resuming), one warning line."""
    import warnings

    out = dict(data)
    if "device" in out:
        device = out.pop("device")
        if device not in _DEVICE_TO_CROPS_ON:
            raise ValueError(f"augment.device was replaced by augment.crops_on (worker | data_actors); got device={device!r}")
        new = _DEVICE_TO_CROPS_ON[device]
        if out.setdefault("crops_on", new) != new:
            raise ValueError(f"augment.device={device} (old name) contradicts augment.crops_on={out['crops_on']}; "
                             "keep only crops_on")
        warnings.warn(f"augment.device={device} is now augment.crops_on={new}", FutureWarning, stacklevel=2)
    if "gpu_image_size" in out:
        size = out.pop("gpu_image_size")
        if out.setdefault("image_size", size) != size:
            raise ValueError("augment.gpu_image_size (old name) contradicts augment.image_size; keep only image_size")
        warnings.warn(f"augment.gpu_image_size={size} is now augment.image_size={size}", FutureWarning, stacklevel=2)
    return out


class TeacherConfig(StrictModel):
    """The frozen pretrained teacher: backbone + its SSL head (prototypes)."""

    name: str | None = Field(None, description="a catalogue name (`experiments/run.py teachers`); sets kind/arch/file")
    kind: str = Field("efficientnet_lite0", description="teacher builder: dino, ibot, msn, swav, timm, state_dict, ...")
    arch: str | None = Field(None, description="timm architecture (e.g. vit_small_patch16_224) for timm/dino/state_dict")
    checkpoint: str | None = Field(None, description="local weights file (.pth/.pt/.safetensors)")
    pretrained: bool = Field(False, description="kind=timm: fetch timm's pretrained weights (needs network or a cache)")
    head_checkpoint: str | None = Field(
        None, description="a DINO-layout head file (mlp.*, last_layer.*) for a backbone-only teacher")
    key_map: dict[str, str] | None = Field(
        None, description="kind=state_dict: ordered {regex: replacement} renames onto backbone.<timm key> / head.<DINO head key>; "
        "a key renamed to '' is dropped")
    head_hidden_dim: int | None = Field(None, gt=0, description="override the SSL head width when the checkpoint has no args")
    head_bottleneck_dim: int | None = Field(None, gt=0)
    head_num_layers: int | None = Field(None, ge=1)
    head_use_bn: bool | None = None
    allow_random_init: bool = Field(False, description="kind=timm without weights: distil from a random network "
                                    "(refused unless set; almost always a missing teacher.checkpoint)")
    prototypes: PrototypesConfig | None = Field(
        None, description="fitted prototypes as the teacher's head (DINOv2/v3, MAE, any backbone): {fit: {k, images}}")

    @model_validator(mode="after")
    def _one_head(self) -> TeacherConfig:
        if self.head_checkpoint and self.prototypes is not None:
            raise ValueError("teacher.head_checkpoint and teacher.prototypes both give the teacher a head; keep one")
        return self


class HeadConfig(StrictModel):
    """Student projector (DINO head): MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

    hidden_dim: int = Field(2048, gt=0)
    bottleneck_dim: int = Field(256, gt=0)
    num_layers: int = Field(3, ge=1)
    use_bn: bool = False
    norm_last_layer: bool = True
    out_dim: int | None = Field(None, gt=0, description="default: the teacher's prototype count")


class StudentConfig(StrictModel):
    arch: str = Field("resnet18", description="any timm model name")
    pretrained: bool = False
    feature: Literal["pre_logits", "pooled"] = Field(
        "pre_logits",
        description="pre_logits: what timm returns with num_classes=0 (MobileNetV3: 1280-d after conv_head); "
        "pooled: forward_features + global pool (MobileNetV3: 960-d)",
    )
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    head: HeadConfig = HeadConfig()


class DinoMethodConfig(StrictModel):
    """RoB-DINO: cross-entropy between the frozen teacher's sharpened prototypes and the student's."""

    name: Literal["dino"] = "dino"
    teacher_temp: float = Field(0.07, gt=0)
    student_temp: float = Field(0.1, gt=0)
    centering: Literal["none", "ema"] = "none"
    center_momentum: float = Field(0.9, ge=0, lt=1)
    pairing: Literal["same_view", "swapped"] = "same_view"
    teacher_norm: Literal["softmax", "sinkhorn"] = Field(
        "softmax", description="teacher targets: softmax(t / teacher_temp), or Sinkhorn-balanced codes (epsilon = "
        "teacher_temp) that use every prototype equally over the batch (SwAV / DINOv2)")
    sinkhorn_iterations: int = Field(3, ge=1, description="teacher_norm=sinkhorn: Sinkhorn-Knopp iterations")

    @model_validator(mode="after")
    def _one_teacher_norm(self) -> DinoMethodConfig:
        if self.teacher_norm == "sinkhorn" and self.centering == "ema":
            raise ValueError("teacher_norm=sinkhorn balances the targets itself; set centering=none")
        return self


class FeatureMethodConfig(StrictModel):
    """Feature-level distillation for teachers without an SSL head (timm DINOv2/v3, MAE, *_pretrain.pth):
    the student projector regresses the teacher's L2-normalised embedding, loss 1 - cosine."""

    name: Literal["feature"] = "feature"
    pairing: Literal["same_view", "swapped"] = "same_view"


class SwavMethodConfig(StrictModel):
    """RoB-SwAV: Sinkhorn-Knopp codes of the frozen teacher's prototype scores vs the student's scores."""

    name: Literal["swav"] = "swav"
    epsilon: float = Field(0.03, gt=0, description="Sinkhorn entropic regularisation")
    sinkhorn_iterations: int = Field(3, ge=0, description="0 = plain softmax(scores / epsilon)")
    student_temp: float = Field(0.1, gt=0)
    prototypes: Literal["teacher", "student"] = Field(
        "teacher", description="score the student's embedding against the teacher's frozen prototypes or its own")
    teacher_views: int = Field(2, ge=1, le=2, description="global crops the teacher assigns codes for (1 or 2)")
    queue_length: int = Field(0, ge=0,
                              description="past teacher score rows (one global queue over all workers) in Sinkhorn (0 = none)")
    pairing: Literal["same_view", "swapped"] = "same_view"


class KDMethodConfig(StrictModel):
    """Supervised KD baseline (Hinton et al. 2015): (1 - alpha) CE(labels) + alpha T^2 KL(teacher || student)."""

    name: Literal["kd"] = "kd"
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term; < 1 needs labelled images")
    temperature: float = Field(10.0, gt=0)
    pairing: Literal["same_view", "swapped"] = "same_view"


class ScratchDinoMethodConfig(StrictModel):
    """SSL from scratch (original DINO, no branch replaced): EMA teacher, centering, temperature warm-up."""

    name: Literal["dino_scratch"] = "dino_scratch"
    out_dim: int = Field(65536, gt=0, description="prototypes of the student head (and its EMA copy)")
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: int = Field(30, ge=0)
    student_temp: float = Field(0.1, gt=0)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    momentum_teacher: float = Field(0.996, ge=0, le=1, description="EMA momentum, cosine to 1 over training")
    pairing: Literal["same_view", "swapped"] = "swapped"


# What a method needs from teacher and student (a ViT student, a patch head, prototypes...) is not checked
# here: its registry entry names the rules (rob_ray/methods/needs.py), run once before launch by preflight.


class IbotMethodConfig(StrictModel):
    """RoB-iBOT: DINO's class-token term + masked-patch prediction against the teacher's patch tokens.

    Masks (iBOT loader.py): per global crop, a ratio drawn from `pred_ratio` +- `pred_ratio_var`
    (the published "0 0.3 / 0 0.2": 0 or U(0.1, 0.5)), filled with blocks of log-aspect-ratio in
    log(`pred_aspect_ratio`). Needs an iBOT teacher (teacher.kind=ibot) and a ViT student.
    """

    name: Literal["ibot"] = "ibot"
    teacher_temp: float = Field(0.07, gt=0)
    teacher_patch_temp: float = Field(0.07, gt=0)
    student_temp: float = Field(0.1, gt=0)
    lambda1: float = Field(1.0, ge=0, description="weight of the class-token term")
    lambda2: float = Field(1.0, ge=0, description="weight of the masked-patch term")
    pairing: Literal["same_view", "swapped"] = "same_view"
    pred_ratio: list[float] = Field([0.0, 0.3], min_length=1)
    pred_ratio_var: list[float] = Field([0.0, 0.2], min_length=1)
    pred_shape: Literal["block", "rand"] = "block"
    pred_aspect_ratio: Range = (0.3, 1 / 0.3)

    @model_validator(mode="after")
    def _ratios(self) -> IbotMethodConfig:
        if len(self.pred_ratio_var) != len(self.pred_ratio):
            raise ValueError(f"pred_ratio_var needs one entry per pred_ratio ({len(self.pred_ratio)}), "
                             f"got {self.pred_ratio_var}")
        for m, v in zip(self.pred_ratio, self.pred_ratio_var):
            if not (0 <= v <= m and m + v < 1):
                raise ValueError(f"mask ratio {m} +- {v} must satisfy 0 <= var <= ratio and ratio + var < 1")
        if self.lambda1 + self.lambda2 == 0:
            raise ValueError("lambda1 and lambda2 are both 0: nothing to learn")
        return self


class MsnMethodConfig(StrictModel):
    """RoB-MSN: the student (token dropping on its global views) scored against the teacher's frozen
    prototypes. Needs an MSN teacher (teacher.kind=msn) and a ViT student."""

    name: Literal["msn"] = "msn"
    teacher_temp: float = Field(0.025, gt=0, description="MSN: tau 0.1 sharpened with T 0.25")
    student_temp: float = Field(0.1, gt=0)
    mask_ratio: float = Field(0.15, ge=0, lt=1, description="fraction of patch tokens dropped (ViT-S 0.15, ViT-Tiny 0.10)")
    pairing: Literal["same_view", "swapped"] = "same_view"
    sinkhorn: bool = False
    sinkhorn_iters: int = Field(3, ge=1)
    me_max: bool = False
    me_max_weight: float = Field(1.0, ge=0)
    projector_hidden_dim: int = Field(2048, gt=0, description="student projector width (output = prototype width)")
    projector_use_bn: bool = True


MethodConfig = Annotated[
    DinoMethodConfig | IbotMethodConfig | MsnMethodConfig | SwavMethodConfig | KDMethodConfig | FeatureMethodConfig
    | ScratchDinoMethodConfig,
    Field(discriminator="name"),
]


class OptimConfig(StrictModel):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1, description="images per worker per step (when global_batch_size is unset)")
    global_batch_size: int | None = Field(
        None, ge=1, description="images per step over all workers, whatever their number (split across the workers "
        "present; a run on 1, 2 or N workers sees the same images per step); default: batch_size x workers "
        "(x the maximum of an elastic range)")
    lr: float = Field(5e-4, gt=0, description="peak LR for a global batch of 256 (scaled linearly)")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    clip_grad: float | None = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (schedules still span all epochs)")


def parse_worker_range(v: Any) -> Any:
    """`scaling.num_workers`: 2 -> 2; "2-4", [2, 4], (2, 4) -> (2, 4); "3-3" -> 3. Raises ValueError
    (one line, with the fix) for a range that cannot run: min 0 (an elastic group needs a worker) or
    min > max. Pure function."""
    if isinstance(v, str) and "-" in v.strip().lstrip("-"):
        lo, _, hi = v.strip().partition("-")
        try:
            v = (int(lo), int(hi))
        except ValueError:
            raise ValueError(f"scaling.num_workers '{v}' is not a number or a range 'min-max' (e.g. 2-4)") from None
    if isinstance(v, list | tuple):
        if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ValueError(f"scaling.num_workers range {list(v)} must be two integers [min, max] (e.g. [2, 4])")
        lo, hi = int(v[0]), int(v[1])
        if lo < 1:
            raise ValueError(f"scaling.num_workers range {lo}-{hi}: the minimum must be >= 1 (an elastic group needs "
                             "a worker; use num_workers=0 for an in-process run)")
        if lo > hi:
            raise ValueError(f"scaling.num_workers range {lo}-{hi}: min > max; write it as {hi}-{lo}")
        return lo if lo == hi else (lo, hi)
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        raise ValueError(f"scaling.num_workers must be >= 0, got {v}")
    return v


class ScalingConfig(StrictModel):
    num_workers: int | tuple[int, int] = Field(
        1, description="training workers; 0 runs the loop in the driver process; a range 'min-max' (or [min, max]) "
        "is an elastic group that starts with what the cluster has and resizes as nodes come and go")
    elastic_resize_interval_s: float = Field(60.0, ge=0, description="elastic ranges: how often Ray Train considers "
                                             "resizing a healthy group")
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, description="default: every CPU of the worker's share of its "
                                          "node that the data actors leave (the launch plan)")
    gpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per CPU worker (default: its CPUs, rounded)")
    workers_per_node: int | None = Field(None, ge=1, description="training workers per node (e.g. 8 on 8-GPU nodes); "
                                         "checked against the cluster's nodes before the run starts")
    worker_resources: dict[str, float] = Field(default_factory=dict,
                                               description="extra Ray resources per training worker (custom labels)")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of one worker GPU, for the teacher-fits "
                                        "check (default: the driver's GPU when it has one)")
    ray_address: str | None = Field(None, description="'auto' joins a running cluster; default: join if one runs, else start one")
    ray_num_cpus: int | None = Field(None, ge=1, description="logical CPUs when rob_ray starts a local Ray")

    @field_validator("num_workers", mode="before")
    @classmethod
    def _worker_range(cls, v: Any) -> Any:
        return parse_worker_range(v)

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers


class RunConfig(StrictModel):
    name: str = Field("rob_demo", pattern=r"^[A-Za-z0-9_.\-]+$", description="stable name: relaunching it resumes")
    storage_path: str = "runs"
    checkpoint_every_steps: int = Field(200, ge=1)
    checkpoint_every_epochs: int = Field(1, ge=1, description="also checkpoint at the end of every N-th epoch")
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: unlimited)")
    max_nonfinite_steps: int = Field(10, ge=1, description="stop after this many non-finite steps in a row")
    max_preemption_failures: int = Field(-1, ge=-1, description="restarts after node preemptions, counted apart from "
                                         "max_failures (-1: unlimited)")
    preemption_check_every_steps: int = Field(1, ge=1, description="ask Ray for preemption notices after every N-th "
                                              "step (a barrier over the workers); a notice checkpoints right away")
    checkpoint_upload: Literal["sync", "async"] = Field(
        "sync", description="async: Ray uploads checkpoints to run.storage_path while training continues (the "
        "checksummed folder is written first; Ray records it only once fully uploaded)")
    checkpoint_score_metric: str | None = Field(
        None, description="also keep <run>/best: the checkpoint with the best value of this metric (e.g. online_knn_top1)")
    checkpoint_score_mode: Literal["max", "min"] = "max"
    log_every_steps: int = Field(10, ge=1)
    compile: bool | None = Field(None, description="torch.compile teacher and student (default: on for GPU)")
    compile_teacher: bool | None = Field(
        None, description="torch.compile the teacher's forward; a frozen pretrained teacher on a CPU worker is "
        "compiled for inference (weights as constants: the demo's step ~7 % faster after ~10 s of compiling; eager "
        "with a note where it cannot compile). Default: as run.compile; both unset, on for GPU workers and for a "
        "frozen teacher on CPU")
    peak_tflops: float | None = Field(None, gt=0, description="device peak TFLOP/s for the MFU metric (e.g. 989 for H100 bf16)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs, fp32 on CPUs (bf16 on a CPU with AVX512-BF16 or AMX "
        "steps ~1.5x faster but is not bitwise reproducible: rob_ray/precision.py)")
    channels_last: bool = True


class TuneConfig(StrictModel):
    """A Ray Tune sweep over dotted config paths (see rob_ray/tune/space.py for the distributions)."""

    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="dotted config path -> {loguniform|uniform: [lo, hi]} | {randint: [lo, hi]} | {choice|grid: [...]}",
    )
    num_samples: int = Field(4, ge=1, description="samples per grid point")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster fits")
    metric: str = Field("online_knn_top1", description="a training metric; 'loss' works without online k-NN")
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = "asha"
    search_alg: Literal["random", "optuna"] = "random"
    grace_period: float = Field(1.0, gt=0, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    trial_driver_cpus: float = Field(0.01, gt=0, description="CPU held by each trial's driver function")
    share_teacher: bool = Field(True, description="a search space of student-side keys only trains its sampled "
                                "configs as multi-student runs sharing one teacher pass (rob_ray/tune/groups.py)")
    students_per_run: int = Field(8, ge=1, description="share_teacher: at most this many configs per multi-student run")
    stop_students_early: bool = Field(False, description="set on a shared-teacher sweep's group runs: ASHA rungs "
                                      "(grace_period, reduction_factor, metric, mode) drop weak students")


class EvalConfig(StrictModel):
    """Evaluation during training: online k-NN on a small labelled held-out set (the Tune signal)."""

    online_knn_every_epochs: int = Field(0, ge=0, description="0 = off; else k-NN every N epochs and at the end")
    online_knn_path: str | None = Field(None, description="labelled ImageFolder with train/ (memory bank) and val/")
    online_knn_max_images: int | None = Field(1000, gt=0, description="cap per split (even spread over classes)")
    online_knn_mode: Literal["inline", "async", "actor"] = Field(
        "inline", description="inline: the epoch-end evaluation runs in the training step's place (training waits); "
        "async: rank 0 evaluates a copy of the student in a background thread while training goes on, and the "
        "result is reported at a later logging step with `eval_step`, the step whose weights it describes; "
        "actor: as async, but a Ray actor with its own resources (eval.actor_cpus / actor_gpus, outside the "
        "training workers' placement group) holds the held-out images and evaluates the weights rank 0 sends it")
    actor_cpus: float = Field(1.0, gt=0, description="online_knn_mode=actor: CPUs of the evaluation actor")
    actor_gpus: float = Field(0.0, ge=0, description="online_knn_mode=actor: GPUs of the evaluation actor "
                              "(0: it evaluates on CPU)")
    online_linear: bool = Field(False, description="with online k-NN: also fit a linear classifier (L2-regularised "
                                "logistic regression, full-batch L-BFGS) on the bank features and report "
                                "`online_linear_top1` on the held-out queries")
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    collapse_std_ratio: float = Field(0.2, ge=0, description="warn when embedding std < ratio / sqrt(dim)")
class DebugConfig(StrictModel):
    """Fault injection for tests of resume; off by default. Each listed step fails once per run folder."""

    fail_at_steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="1-based steps (as in metrics' step) during which a worker fails once")
    fail_mode: Literal["raise", "exit", "hang"] = Field(
        "raise", description="raise: a Python exception; exit: os._exit(1); hang (fail_at_steps only): the worker "
        "stops and waits until something kills it, as a machine being taken away (tests remove its node)")
    fail_rank: int = Field(0, ge=0, description="the worker rank that fails")
    nonfinite_at_steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="1-based steps whose loss is replaced by NaN (every attempt)")
    preempt_at_step: int | None = Field(
        None, ge=1, description="simulate a preemption notice after this 1-based step (once per run folder): "
        "checkpoint, then the worker fails as by fail_mode")


# The optimiser keys one student of a multi-student run may set for itself; the rest (batch size, epochs,
# max_steps) shape the shared sample stream and stay run-wide.
STUDENT_OPTIM_KEYS = ("optimizer", "lr", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "momentum",
                      "clip_grad")


class StudentEntry(StrictModel):
    """One student of a multi-student run (`students:`): a name and overrides of the run's student-side
    settings. Everything else (teacher, data, augmentation, seed, batch size, epochs) is shared: the
    teacher runs once per step on the global views and every student learns from that output.

        students:
          - {name: r18}
          - {name: vit_t, student: {arch: vit_tiny_patch16_224}, optim: {lr: 1.0e-3}, method: {student_temp: 0.2}}
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="metric prefix and checkpoint key of this student")
    student: dict[str, Any] = Field(default_factory=dict, description="keys of the top-level student section to "
                                    "change for this student (arch, head, drop_path_rate, ...)")
    optim: dict[str, Any] = Field(default_factory=dict, description=f"its own {', '.join(STUDENT_OPTIM_KEYS)}")
    method: dict[str, Any] = Field(default_factory=dict, description="its own method settings (temperatures, ...); "
                                   "method.name is run-wide")


class Config(StrictModel):
    # The data stream uses the seed's low 32 bits; torch.manual_seed takes < 2**64: bound it here, not in a worker.
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    method: MethodConfig = DinoMethodConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig = RunConfig()
    tune: TuneConfig = TuneConfig()
    eval: EvalConfig = EvalConfig()
    debug: DebugConfig = DebugConfig()
    students: list[StudentEntry] = Field(
        default_factory=list, description="several students sharing one teacher pass per step (empty: the one "
        "`student` section); each entry overrides `student` / its optimiser / method settings")

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v  # `teacher: dino_vitb16` names a catalogue entry

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.augment.crops_on == "auto":  # resolved here, so the saved config names the placement used
            self.augment.crops_on = resolve_crops_on("auto", self.scaling.use_gpu)
        if self.augment.local_size > self.augment.global_size:
            raise ValueError(
                f"augment.local_size ({self.augment.local_size}) must not exceed augment.global_size "
                f"({self.augment.global_size})"
            )
        if getattr(self.method, "pairing", None) == "swapped" and self.augment.num_global < 2 \
                and self.augment.num_local == 0:
            raise ValueError("method.pairing=swapped with one global and no local crop leaves no view pair")
        if self.method.name == "swav" and self.method.teacher_views > self.augment.num_global:
            raise ValueError(f"method.teacher_views ({self.method.teacher_views}) exceeds augment.num_global "
                             f"({self.augment.num_global})")
        if self.method.name == "dino_scratch" and self.student.head.out_dim not in (None, self.method.out_dim):
            raise ValueError(f"student.head.out_dim ({self.student.head.out_dim}) differs from method.out_dim "
                             f"({self.method.out_dim}); set only method.out_dim for dino_scratch")
        if self.eval.online_knn_every_epochs and not self.eval.online_knn_path:
            raise ValueError("eval.online_knn_every_epochs needs eval.online_knn_path (a labelled train/ + val/ folder)")
        for key, res in (("eval.actor_cpus", self.eval.actor_cpus), ("eval.actor_gpus", self.eval.actor_gpus)):
            if res > 1 and res != int(res):  # Ray refuses fractional amounts above one unit
                raise ValueError(f"{key} ({res:g}) above 1 must be a whole number (Ray's rule); use {math.ceil(res)} "
                                 "or a fraction below 1")
        if self.eval.online_knn_mode != "actor" and (self.eval.actor_cpus, self.eval.actor_gpus) != (1.0, 0.0):
            raise ValueError(f"eval.actor_cpus / eval.actor_gpus size the evaluation actor of "
                             f"eval.online_knn_mode=actor, but the mode is '{self.eval.online_knn_mode}'; set "
                             "eval.online_knn_mode=actor or remove them")
        if self.teacher.prototypes is not None and self.method.name in ("feature", "dino_scratch"):
            raise ValueError(f"teacher.prototypes is set but method.name={self.method.name} uses no teacher prototypes; "
                             "remove teacher.prototypes (or use method.name=dino)")
        for key, res in (("data.actor_resources", self.data.actor_resources),
                         ("scaling.worker_resources", self.scaling.worker_resources)):
            if {"CPU", "GPU"} & set(res) or any(v <= 0 for v in res.values()):
                raise ValueError(f"{key} takes custom resources > 0 only (CPU/GPU have their own keys), got {res}")
        if self.optim.warmup_epochs > self.optim.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.optim.warmup_epochs:g}) must not exceed optim.epochs "
                             f"({self.optim.epochs})")
        if self.debug.fail_rank >= max(self.scaling.min_workers, 1):
            raise ValueError(f"debug.fail_rank ({self.debug.fail_rank}) must be below the number of workers "
                             f"({max(self.scaling.min_workers, 1)})")
        if self.optim.global_batch_size is not None and self.optim.global_batch_size < self.scaling.max_workers:
            raise ValueError(f"optim.global_batch_size ({self.optim.global_batch_size}) is smaller than the number of "
                             f"workers ({self.scaling.max_workers}): every worker needs an image per step")
        _check_students(self)
        return self

    def run_dir(self) -> Path:
        return Path(self.run.storage_path) / self.run.name

    def global_batch(self, world_size: int | None = None) -> int | None:
        """Images per step over all workers: `optim.global_batch_size`; unset, an elastic range fixes it at
        batch_size x its maximum; else None (batch_size x the workers present, as before)."""
        if self.optim.global_batch_size is not None:
            return self.optim.global_batch_size
        if self.scaling.elastic:
            return self.optim.batch_size * self.scaling.max_workers
        return None


def _student_data(cfg: Config, entry: StudentEntry) -> dict[str, Any]:
    data = cfg.model_dump(mode="json", exclude={"students"})
    for section, values in (("student", entry.student), ("optim", entry.optim), ("method", entry.method)):
        _merge(data[section], values)
    return data


def _merge(node: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            _merge(node[key], value)
        else:
            node[key] = value


def _check_students(cfg: Config) -> None:
    """Names unique; only student-side keys; every student's resolved config valid (one line, naming it)."""
    names = [e.name for e in cfg.students]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"students: name '{dup[0]}' is used twice; give every student its own name")
    for i, e in enumerate(cfg.students):
        where = f"students[{i}] ('{e.name}')"
        bad = [k for k in e.optim if k not in STUDENT_OPTIM_KEYS]
        if bad:
            raise ValueError(f"{where}: optim.{bad[0]} is run-wide (it shapes the shared sample stream); a student "
                             f"may set only {', '.join(STUDENT_OPTIM_KEYS)}")
        if "name" in e.method and e.method["name"] != cfg.method.name:
            raise ValueError(f"{where}: method.name is run-wide ({cfg.method.name}); run another method in its own run")
        try:
            Config.model_validate(_student_data(cfg, e))
        except ValidationError as err:
            raise ValueError(f"{where}: {format_validation_error(err).removeprefix('config error: ')}") from None


def student_configs(cfg: Config) -> list[tuple[str, Config]]:
    """(name, config) of every student a run trains: each entry of `students` resolved over the run's
    config (its own `students` emptied), or the run itself as one unnamed student when `students` is empty."""
    if not cfg.students:
        return [("", cfg)]
    return [(e.name, Config.model_validate(_student_data(cfg, e))) for e in cfg.students]


# ---------------------------------------------------------------- loading and errors


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc[:-1]` (for listing valid keys)."""
    model: Any = Config
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            # Discriminated union members appear as an extra loc part (e.g. 'dino'); skip those.
            continue
        ann = model.model_fields[part].annotation
        models = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1 and type(None) in typing.get_args(ann):  # an optional section (X | None)
            ann = models[0]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else _union_member(ann, loc)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _union_member(ann: Any, loc: tuple[Any, ...]) -> Any:
    for arg in getattr(ann, "__args__", ()):
        for inner in getattr(arg, "__args__", (arg,)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                name_field = inner.model_fields.get("name")
                if name_field is not None and name_field.default in loc:
                    return inner
    return None


def format_validation_error(err: ValidationError) -> str:
    """One line for the first error: key, value, what is allowed."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"])
    # A discriminated union adds the member's tag after "method" (method.dino.lr): drop it.
    key = ".".join(str(p) for i, p in enumerate(loc) if not (i == 1 and loc[0] == "method" and p in _method_names()))
    key = key or "<root>"
    if e["type"] == "extra_forbidden":
        owner = _model_at(loc)
        valid = ", ".join(_valid_keys(owner)) if owner else "?"
        close = difflib.get_close_matches(str(loc[-1]), _valid_keys(owner) if owner else [], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"config error: unknown key '{key}'{hint}; valid keys here: {valid}"
    if e["type"] == "union_tag_invalid":
        got = e["input"].get("name") if isinstance(e["input"], dict) else e["input"]
        return f"config error: {key}.name: unknown method '{got}'; choose one of {e['ctx']['expected_tags']}"
    msg = e["msg"].removeprefix("Value error, ")
    if loc and loc[:-1] and isinstance(loc[-1], int) and e["type"] == "missing" and isinstance(e["input"], list | tuple):
        # A too-short list: pydantic names the first missing item; say how many values are needed.
        parent = ".".join(str(p) for p in loc[:-1])
        owner = _model_at(loc[:-1])
        field = owner.model_fields.get(str(loc[-2])) if owner else None
        n = len(getattr(field.annotation, "__args__", ())) if field else 0
        need = f"exactly {n} values" if n else "more values"
        return f"config error: {parent} = {list(e['input'])!r}: needs {need}, got {len(e['input'])}"
    if key == "<root>":  # cross-field checks name their fields in the message
        return f"config error: {msg}"
    if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
        return f"config error: {key} = {e['input']!r}: {msg}"
    return f"config error: {key}: {msg}"


def _method_names() -> set[str]:
    """The `name` tags of the MethodConfig union (derived, so a new method needs no second list)."""
    members = typing.get_args(typing.get_args(MethodConfig)[0])
    return {m.model_fields["name"].default for m in members}


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a *string*; configs are full of such
    learning rates, so numbers in scientific notation are read as floats here, as YAML 1.2 does."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """YAML as rob_ray reads it (safe, with YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Yaml12FloatLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"config error: override '{text}' is not key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"config error: override '{text}' has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted `key.sub=value` overrides (values parsed as YAML) into a nested dict."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"config error: override '{text}': '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError with one line."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config error: config file '{p}' not found; pass an existing YAML file to --config")
        try:
            loaded = load_yaml(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config error: '{p}' is not valid YAML{where}; fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: '{p}' must hold a mapping of sections (data:, optim:, ...)")
        data = loaded
    data = apply_overrides(data, overrides or [])
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> Config:
    method = data.get("method")
    if isinstance(method, dict) and "name" not in method:
        data = {**data, "method": {"name": "dino", **method}}  # the default method needs no name
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomic)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(p)
    return p
