"""Merge models into a stock transformers folder (config, safetensors weights, card, recipe).

Layer-wise by default: every shared layer averages the models, with the anchor's weight rising from
--alpha in early layers to 1 in the deepest ones; heads and tensors the models do not share come from
the anchor.

examples:
  lwmm-hub merge org/uda-a org/uda-b org/uda-c --anchor org/uda-a -o merged
  lwmm-hub merge ./a ./b --method isotropic -o merged-iso --push-to-hub me/merged-iso
  lwmm-hub merge --recipe merged/lwmm_recipe.yaml --alpha 0.5 -o merged-alpha05
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hf_lwmm.recipe import MergeRecipe, RunOptions
    from hf_lwmm.result import MergeResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help="merge models layer-wise (or with a baseline method)", description=__doc__)
    parser.add_argument("models", nargs="*", help="local folders or Hub repos org/name[@revision][:subfolder]")
    parser.add_argument("--output", "-o", type=Path, help="output folder (default: ./merged)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--recipe", type=Path, help="run the merge described by a recipe file (flags override it)")
    parser.add_argument("--name", help="the card's title when not pushing (default: the output folder's name)")
    add_recipe_arguments(parser)
    from hf_lwmm.commands.push import add_push_options

    add_push_options(parser, with_repo_flag=True)
    parser.add_argument("--push-sources", metavar="ORG", help="with --push-to-hub: first push each local source folder as "
                        "ORG/<folder name>, and merge those Hub repos (the card then records them with their commits)")
    from hf_lwmm.commands.eval import add_data_arguments

    add_data_arguments(parser, flag="--eval-dataset", required=False)
    parser.add_argument("--eval-ensemble", action="store_true",
                        help="with --eval-dataset: also evaluate the sources' output ensemble (the card's results table)")
    parser.set_defaults(run=run)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the recipe, one per method parameter (generated from the methods' declarations), and run options.

    ``None`` means "not given" (a ``--recipe`` file's value, else the default, applies).
    """
    from hf_lwmm.commands import flag_of
    from hf_lwmm.methods import METHODS
    from hf_lwmm.recipe import BN_STATS_MODES, OUTPUT_DTYPES

    group = parser.add_argument_group("recipe")
    group.add_argument("--anchor", help="the model whose heads and deep layers win (default: the first)")
    group.add_argument("--method", choices=sorted(METHODS), help="merge method (default: layerwise)")
    group.add_argument("--bn-stats", choices=BN_STATS_MODES, help="BatchNorm running statistics (default: gaussian)")
    group.add_argument("--dtype", choices=OUTPUT_DTYPES, help="output dtype of floating tensors (default: the anchor's)")
    group.add_argument("--max-shard-size", help="largest output weights file, e.g. 500MB (default: 5GB)")
    parameters = parser.add_argument_group("method parameters")
    for name, (methods, field) in method_parameter_fields().items():
        parameters.add_argument(flag_of(name), dest=name, type=_flag_type(field.annotation),
                                help=f"{', '.join(methods)}: {field.description}")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", help="where the merge math runs: auto (default), cpu, cuda, …")
    run_group.add_argument("--allow-pickle", action="store_true",
                           help="load pytorch_model.bin (local or from the Hub) with torch.load(weights_only=True)")


def method_parameter_fields() -> dict[str, tuple[list[str], Any]]:
    """Every parameter any method declares → (the methods that take it, the first declaration's field)."""
    from hf_lwmm.methods import METHODS

    fields: dict[str, tuple[list[str], Any]] = {}
    for method in METHODS.values():
        for name, field in method.Parameters.model_fields.items():
            fields.setdefault(name, ([], field))[0].append(method.name)
    return fields


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the parameter's type: numbers, comma-separated numbers, else the text as is."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(annotation) if union else (annotation,)) - {type(None)}
    if kinds == {float}:
        return float
    if kinds == {int}:
        return int
    if kinds == {list[float]}:
        return _float_list
    return str


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


#: recipe fields set by flags of the same name (beyond the method parameters)
_RECIPE_FLAGS = ("anchor", "method", "bn_stats", "dtype", "max_shard_size")


def recipe_from_args(args: argparse.Namespace) -> MergeRecipe:
    """A recipe from ``--recipe`` (if any) overridden by the flags given; a bad flag's error names the flag."""
    from hf_lwmm.commands import flag_of
    from hf_lwmm.errors import LwmmError
    from hf_lwmm.methods import METHODS
    from hf_lwmm.recipe import MergeRecipe, load_recipe

    base = load_recipe(args.recipe) if args.recipe else None
    if not args.models and base is None:
        raise LwmmError("no models given (pass two or more model references, or --recipe FILE)")
    method = args.method or (base.method if base else "layerwise")
    declared = METHODS[method].Parameters.model_fields
    given = {name: getattr(args, name) for name in method_parameter_fields() if getattr(args, name) is not None}
    for name in given:
        if name not in declared:
            known = ", ".join(flag_of(known) for known in declared) or "none"
            raise LwmmError(f"{flag_of(name)}: not a parameter of --method {method} (its parameters: {known})")
    parameters = base.parameters.model_dump() if base is not None and base.method == method else {}
    fields: dict[str, Any] = base.to_dict() if base is not None else {}
    fields.update({name: getattr(args, name) for name in _RECIPE_FLAGS if getattr(args, name) is not None})
    fields.update(method=method, parameters={**parameters, **given})
    if args.models:
        fields["models"] = list(args.models)
    return MergeRecipe(**fields)


def run_options(args: argparse.Namespace) -> RunOptions:
    from hf_lwmm.recipe import RunOptions

    return RunOptions(device=args.device or "auto", allow_pickle=bool(args.allow_pickle), overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from hf_lwmm.merge import check_output, merge

    recipe = recipe_from_args(args)
    options = run_options(args)
    output = args.output or Path("merged")
    check_output(output, recipe, options, name="--output")  # first: a refused output should cost nothing
    if args.push_sources and not args.push_to_hub:
        from hf_lwmm.errors import LwmmError

        raise LwmmError("--push-sources: only with --push-to-hub (the sources are pushed so that the pushed merge names them)")
    if args.push_to_hub:
        from hf_lwmm.commands.push import push_options
        from hf_lwmm.hub import check_push_target

        check_push_target(args.push_to_hub, push_options(args))  # a bad repo, token or branch should not cost a merge
    from hf_lwmm.commands.eval import evaluation_options, load_data

    eval_data = load_data(args) if args.dataset else None  # before the merge: bad data should not cost a merge
    if args.push_sources:
        from hf_lwmm.hub import push_local_sources

        recipe = push_local_sources(recipe, args.push_sources)  # then merged from the Hub, so the card records them
    result = merge(recipe, output, options, hub_repo=args.push_to_hub, name=args.name)
    print(summary(result))
    if eval_data is not None:
        from hf_lwmm.evaluation.card_results import record_evaluation
        from hf_lwmm.evaluation.report import per_class_table

        print(per_class_table(record_evaluation(result, eval_data, ensemble=args.eval_ensemble, **evaluation_options(args))))
    if args.push_to_hub:
        from hf_lwmm.hub import push_folder

        print(push_folder(result.output_dir, args.push_to_hub, push_options(args)).summary())
    return 0


def summary(result: MergeResult) -> str:
    """A few lines on what was merged, for the terminal."""
    labels = result.alignment.labels
    lines = [
        f"merged {len(labels)} models with {result.recipe.method} → {result.output_dir}",
        f"  anchor: {labels[result.anchor]}",
        f"  tensors: {result.merged_tensors} merged, {result.anchor_tensors} from the anchor; {len(result.layer_weights)} shared layers",
    ]
    lines += [f"  {name}  sha256 {digest}" for name, digest in result.sha256.items()]
    return "\n".join(lines)
