"""Models: students (timm backbone + projector), SSL heads and frozen teachers."""

from rob_ray.models.heads import DINOHead
from rob_ray.models.students import Student, StudentBuildError, build_student, feature_width
from rob_ray.models.teachers import Teacher, TeacherLoadError, build_teacher, list_teachers

__all__ = [
    "DINOHead",
    "Student",
    "StudentBuildError",
    "Teacher",
    "TeacherLoadError",
    "build_student",
    "build_teacher",
    "feature_width",
    "list_teachers",
]
