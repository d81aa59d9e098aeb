"""What is merged (:class:`MergeRecipe`, saved as ``lwmm_recipe.yaml``) apart from how a run executes (:class:`RunOptions`).

Both are frozen, strict pydantic models (no ``"no"`` → ``False`` coercion, no unknown keys): every wrong
field is one :class:`~hf_lwmm.errors.RecipeError` (or :class:`~hf_lwmm.errors.RunOptionError`) line
naming it. A recipe file holds only the recipe, so replaying one written on a GPU machine runs on a
CPU, and a file cannot switch on pickle loading.

Recipe files: ``lwmm_recipe.yaml`` written by a merge (``recipe`` + resolved ``sources`` + hashes), or a
bare recipe mapping written by hand. Reading one pins every Hub source at the commit the merge resolved.
Files written before the typed recipe (``recipe_format`` absent) are read too: their flat method fields
move under ``parameters``; their ``device`` and ``allow_pickle`` are dropped (how to run is given anew).

Layering: imports the methods' parameter declarations, :mod:`hf_lwmm.refs` (reference syntax) and
:mod:`hf_lwmm.io.writer` (shard sizes); the planner and everything above import this module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from hf_lwmm.errors import FieldError, LwmmError, RecipeError, RunOptionError
from hf_lwmm.io.writer import parse_size
from hf_lwmm.methods import METHODS, MethodParameters
from hf_lwmm.refs import ModelRef

RECIPE_NAME = "lwmm_recipe.yaml"
#: layout version of a recipe file written by a merge (absent: the flat layout from before the typed recipe)
RECIPE_FORMAT = 2
BN_STATS_MODES = ("gaussian", "anchor", "linear")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_SHARD_SIZE = "5GB"
#: keys that describe how a run executes: refused in a recipe, they belong to :class:`RunOptions`
_RUN_KEYS = ("device", "allow_pickle", "token", "progress", "overwrite")
_LEGACY_METHOD_KEYS = ("alpha", "start_layer", "schedule", "weights")
_UNION_MEMBER = re.compile(r"^(int|float|str|bool|none|list\[.*\]|dict\[.*\])$")


def _first_error(err: ValidationError, error: type[FieldError]) -> FieldError:
    """The first problem pydantic found, as one line naming the field."""
    problem = err.errors()[0]
    # pydantic names the member of a union it tried (``start_layer.int``): the field is what the user wrote
    location = [str(part) for part in problem["loc"] if not _UNION_MEMBER.match(str(part))]
    field = location[0] if location else "?"
    for part in location[1:]:
        field += f"[{part}]" if part.isdigit() else f".{part}"
    if field.startswith("parameters."):
        field = field.removeprefix("parameters.")
    if problem["type"] == "extra_forbidden":
        if error is RecipeError and any(field in method.Parameters.model_fields for method in METHODS.values()):
            return error(field, "a method parameter: write it under 'parameters:'")
        return error(field, "unknown field")
    if problem["type"] == "missing":
        return error(field, "required")
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] not in ("value_error", "assertion_error") and "input" in problem:
        message += f" (got {problem['input']!r})"
    return error(field, message)


def find_anchor(models: list[str], anchor: str | None) -> int:
    """The one place that finds the anchor: its index among ``models`` (the first when ``None``)."""
    if anchor is None:
        return 0
    wanted = ModelRef.parse(anchor)
    for index, model in enumerate(models):
        if ModelRef.parse(model) == wanted:
            return index
    raise RecipeError("anchor", f"{anchor}: not among the models being merged ({', '.join(models)})")


class MergeRecipe(BaseModel):
    """What is merged; ``merge(recipe, output_dir)`` (or ``execute(plan_merge(recipe), …)``) runs it.

    Args:
        models: model references (local folders as ``str`` or ``Path``, or ``org/name[@revision][:subfolder]``).
        anchor: the model whose heads and deep layers win; defaults to the first model.
        method: a name from :data:`hf_lwmm.methods.METHODS` (``layerwise``, ``isotropic``, ``linear``, ``fisher``).
        parameters: the method's own parameters, a mapping or its ``Parameters`` model (e.g. ``{"alpha": 0.5}``).
        bn_stats: how BatchNorm running statistics merge: ``gaussian``, ``anchor`` or ``linear``.
        dtype: output dtype of floating tensors; defaults to the anchor's.
        max_shard_size: largest output safetensors file, e.g. ``"5GB"`` or ``"500MB"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    models: list[str]
    anchor: str | None = None
    method: str = "layerwise"
    parameters: SerializeAsAny[MethodParameters] = Field(default_factory=MethodParameters)
    bn_stats: Literal["gaussian", "anchor", "linear"] = "gaussian"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    max_shard_size: str = DEFAULT_SHARD_SIZE

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _first_error(err, RecipeError) from None

    @model_validator(mode="before")
    @classmethod
    def _typed_parameters(cls, data: Any) -> Any:
        """Refuse run options, paths → ``str``, and ``parameters`` validated against the method's declaration."""
        if not isinstance(data, dict):
            raise RecipeError("recipe", f"expected a mapping of recipe fields, got {type(data).__name__}")
        data = dict(data)
        for key in _RUN_KEYS:
            if key in data:
                raise RecipeError(key, "says how a run executes, not what is merged: give it to this run "
                                       f"(RunOptions({key}=…) or --{key.replace('_', '-')}), not in the recipe")
        if isinstance(data.get("models"), (list, tuple)):
            data["models"] = [str(model) if isinstance(model, Path) else model for model in data["models"]]
        if isinstance(data.get("anchor"), Path):
            data["anchor"] = str(data["anchor"])
        method = data.get("method", "layerwise")
        if not isinstance(method, str) or method not in METHODS:
            raise RecipeError("method", f"{method!r}: unknown (choose from {', '.join(METHODS)})")
        declared = METHODS[method].Parameters
        parameters = data.get("parameters")
        if parameters is None:
            parameters = {}
        if isinstance(parameters, MethodParameters) and not isinstance(parameters, declared):
            raise RecipeError("parameters", f"{type(parameters).__name__} given for method {method} (it takes {declared.__name__})")
        if not isinstance(parameters, (dict, declared)):
            raise RecipeError("parameters", f"expected a mapping of {method} parameters, got {type(parameters).__name__}")
        if isinstance(parameters, dict):
            unknown = sorted(set(parameters) - set(declared.model_fields))
            if unknown:
                known = ", ".join(declared.model_fields) or "none"
                raise RecipeError(str(unknown[0]), f"not a parameter of method {method} (its parameters: {known})")
            try:
                parameters = declared.model_validate(parameters)
            except ValidationError as err:
                raise _first_error(err, RecipeError) from None
        data["parameters"] = parameters
        return data

    @field_validator("max_shard_size")
    @classmethod
    def _shard_size(cls, value: str) -> str:
        try:
            parse_size(value)
        except FieldError as err:
            raise RecipeError("max_shard_size", err.problem) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MergeRecipe:
        if len(self.models) < 2:
            raise RecipeError("models", f"need at least two models to merge, got {len(self.models)}")
        for model in self.models:
            ModelRef.parse(model)  # the reference syntax (no network, no disk beyond "is it a folder")
        find_anchor(self.models, self.anchor)
        self.parameters.check_models(len(self.models))
        return self

    @property
    def refs(self) -> list[ModelRef]:
        return [ModelRef.parse(model) for model in self.models]

    @property
    def anchor_index(self) -> int:
        return find_anchor(self.models, self.anchor)

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    def replace(self, **changes: Any) -> MergeRecipe:
        """A validated copy with some fields changed (a new ``method`` needs its ``parameters``)."""
        return MergeRecipe(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready); ``MergeRecipe.from_dict(recipe.to_dict()) == recipe``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> MergeRecipe:
        if not isinstance(data, dict):
            raise RecipeError("recipe", f"expected a mapping of recipe fields, got {type(data).__name__}")
        return cls(**{str(key): value for key, value in data.items()})


class RunOptions(BaseModel):
    """How a merge runs (never written into a recipe).

    Args:
        device: where the merge math runs (``auto``: an accelerator when present, else the CPU).
        allow_pickle: load local ``pytorch_model.bin`` files with ``torch.load(weights_only=True)``.
        token: Hub token (``None``: ``HF_TOKEN`` or the stored login).
        progress: show progress bars.
        overwrite: replace a non-empty output folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    device: str = "auto"
    allow_pickle: bool = False
    token: str | bool | None = None
    progress: bool = True
    overwrite: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _first_error(err, RunOptionError) from None


# --------------------------------------------------------------------------------------- recipe files


def read_recipe_document(path: Path, *, written_by_merge: bool = False) -> dict[str, Any]:
    """The one place that reads a recipe file: a YAML mapping, UTF-8, each failure one line naming the file.

    ``written_by_merge``: also require what a merge writes beside the recipe (``recipe`` and ``sources``).
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise LwmmError(f"recipe {path}: unreadable ({err.strerror or err.__class__.__name__})") from None
    except UnicodeDecodeError as err:
        raise LwmmError(f"recipe {path}: not UTF-8 text (byte {err.start})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LwmmError(f"recipe {path}: not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise LwmmError(f"recipe {path}: not a YAML mapping of recipe fields")
    if written_by_merge and not (isinstance(document.get("recipe"), dict) and isinstance(document.get("sources"), list)):
        raise LwmmError(f"{path}: not a merge recipe written by lwmm-hub (needs 'recipe' and 'sources')")
    return document


def recipe_of_document(document: dict[str, Any], *, source: str) -> MergeRecipe:
    """The recipe a document holds, Hub sources pinned at their recorded commits; legacy layouts converted."""
    fields = document.get("recipe", document)
    if not isinstance(fields, dict):
        raise LwmmError(f"{source}: 'recipe' is not a mapping of recipe fields")
    if "recipe" in document and "recipe_format" not in document:
        fields = _from_legacy(fields)
    try:
        recipe = MergeRecipe.from_dict(fields)
    except RecipeError as err:
        raise RecipeError(err.field, f"{err.problem} (in {source})") from None
    records = document.get("sources")
    if not isinstance(records, list):
        return recipe
    if len(records) != len(recipe.models) or not all(isinstance(record, dict) and "ref" in record for record in records):
        raise LwmmError(f"{source}: {len(records)} sources recorded for {len(recipe.models)} models")
    pinned = [pinned_source(record) for record in records]
    anchor = None if recipe.anchor is None else pinned[recipe.anchor_index]
    return recipe.replace(models=pinned, anchor=anchor)


def load_recipe(path: Path) -> MergeRecipe:
    """Read a recipe file (``lwmm_recipe.yaml`` of an earlier merge, or one written by hand)."""
    return recipe_of_document(read_recipe_document(path), source=str(path))


def pinned_source(record: dict[str, Any], *, short: bool = False) -> str:
    """A recorded source as a reference pinned at its resolved commit (local folders stay as recorded)."""
    commit = record.get("commit")
    if not commit:
        return str(record["ref"])
    ref = ModelRef.parse(str(record["ref"]))
    return str(ref.pinned(commit[:10] if short else str(commit)))


def _from_legacy(fields: dict[str, Any]) -> dict[str, Any]:
    """A recipe as written before the typed recipe: method fields were flat, run options were inside."""
    fields = dict(fields)
    for key in _RUN_KEYS:
        fields.pop(key, None)
    method = fields.get("method", "layerwise")
    declared = METHODS[method].Parameters.model_fields if isinstance(method, str) and method in METHODS else {}
    parameters = {key: fields.pop(key) for key in _LEGACY_METHOD_KEYS if key in fields}
    parameters = {key: value for key, value in parameters.items() if key in declared and value is not None}
    options = fields.pop("method_options", None) or {}
    if isinstance(options, dict):
        parameters.update(options)
    fields["parameters"] = parameters
    return fields
