"""User-facing errors: each carries one line that names the input at fault."""

from __future__ import annotations


class LwmmError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits non-zero."""


class IncompatibleModelsError(LwmmError):
    """The models cannot be merged (no shared encoder, different depth, ...)."""


class CorruptWeightsError(LwmmError):
    """A weights file is truncated, malformed or holds non-finite values where it must not."""
