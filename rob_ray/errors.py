"""User-facing errors: one base class, one module, importable without pydantic / yaml / torch / Ray.

Every error a user can fix (a config value, a data folder, a teacher file, a checkpoint, an eval or
export option) is a `RobRayError` whose message is one line naming the problem and the fix; the CLI
prints that line and exits with code 2. Anything else keeps its traceback (a bug). The subclasses keep
their historical built-in bases (ValueError / RuntimeError) so `except ValueError` callers still work.
"""

from __future__ import annotations

__all__ = [
    "EXIT_USER_ERROR",
    "CheckpointError",
    "ConfigError",
    "DataSourceError",
    "EvalInputError",
    "ExportError",
    "RobRayError",
    "StudentBuildError",
    "TeacherLoadError",
    "first_line",
]

EXIT_USER_ERROR = 2


class RobRayError(Exception):
    """Base of every user-facing error; its message is one line (problem + fix)."""


class ConfigError(RobRayError, ValueError):
    """A configuration problem (a key, a value, an impossible combination)."""


class DataSourceError(RobRayError, ValueError):
    """The configured data cannot be listed (missing path, no images, wrong column)."""


class TeacherLoadError(RobRayError, ValueError):
    """A teacher could not be built or loaded; the message names the file, the architecture and the mismatch."""


class StudentBuildError(RobRayError, ValueError):
    """The student cannot be built (unknown timm name, ...)."""


class CheckpointError(RobRayError, RuntimeError):
    """A run checkpoint is missing, damaged or does not fit the model it should restore."""


class EvalInputError(RobRayError, ValueError):
    """Evaluation cannot use what it was given (data, checkpoint path, option)."""


class ExportError(RobRayError, ValueError):
    """Export cannot write or verify what it was asked for."""


def first_line(exc: BaseException) -> str:
    """The one line the CLI prints for a user error (the class name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
