"""User-facing error types, importable without pydantic / yaml / Ray (the GPU benchmark box has none)."""

__all__ = ["ConfigError", "EvalInputError"]


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line."""


class EvalInputError(ValueError):
    """Evaluation cannot use what it was given (data, checkpoint path, option); its message is one line.

    The `eval` command turns these into exit code 2; any other exception stays a traceback (a bug).
    """
