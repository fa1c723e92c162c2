"""User-facing error types, importable without pydantic / yaml / Ray (the GPU benchmark box has none)."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line."""
