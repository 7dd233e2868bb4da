"""Project exception types.

Every error the package raises on purpose derives from :class:`PolarVBLLError`, so a
learner can catch one type, and each message names the input that was wrong and what
was expected. The subclasses also derive from the matching builtin (``ValueError``,
``FileNotFoundError`` ...) so ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class PolarVBLLError(Exception):
    """Base class of every error raised on purpose by polar_vbll."""


class ConfigError(PolarVBLLError, ValueError):
    """An argument, option, profile or environment variable has a value we cannot use."""


class DataError(PolarVBLLError, ValueError):
    """A task file is missing, malformed, or holds an answer we cannot map to a choice."""


class ModelError(PolarVBLLError, RuntimeError):
    """A backbone cannot be found or loaded (unknown name, missing package, offline hub)."""


class ShapeError(PolarVBLLError, ValueError):
    """Tensors whose shapes do not fit together (feature width, checkpoint shapes, ranks)."""


class NumericalError(PolarVBLLError, FloatingPointError):
    """A loss, feature or update that should be finite is NaN or infinite."""


class CheckpointError(PolarVBLLError, ValueError):
    """A checkpoint folder is missing files or does not match the model it is loaded into."""
