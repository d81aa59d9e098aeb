"""User-facing errors: each carries one line that names the input at fault."""

from __future__ import annotations


class LwmmError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits non-zero."""


class IncompatibleModelsError(LwmmError):
    """The models cannot be merged (no shared encoder, different depth, ...)."""


class CorruptWeightsError(LwmmError):
    """A weights file is truncated, malformed or holds non-finite values where it must not."""



class FieldError(LwmmError):
    """A named argument has a wrong type or value; ``field`` names it, ``problem`` says what is wrong.

    Not a ``ValueError`` on purpose: raised inside pydantic validators, it passes through unchanged.
    """

    kind = "argument"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{self.kind} {field!r}: {problem}")
        self.field = field
        self.problem = problem


class RecipeError(FieldError):
    """A field of :class:`~hf_lwmm.recipe.MergeRecipe` (what is merged) is wrong."""

    kind = "recipe field"


class RunOptionError(FieldError):
    """A field of :class:`~hf_lwmm.recipe.RunOptions` (how a run executes) is wrong."""

    kind = "run option"
