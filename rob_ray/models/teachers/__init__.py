"""Frozen SSL teachers: the contract, the registry and the checkpoint loaders."""

from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import load_weights
from rob_ray.models.teachers.registry import build_teacher, list_teachers, register_teacher

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Teacher",
    "TeacherLoadError",
    "build_teacher",
    "list_teachers",
    "load_weights",
    "register_teacher",
]
