"""The merged model's card (``README.md``), recipe (``lwmm_recipe.yaml``) and weight plot.

The card is rendered with huggingface_hub's ``ModelCard.from_template`` from ``model_cards/lwmm_merge.md``
and records everything needed to reproduce the merge: sources at resolved revisions, per-layer weights,
the recipe, the weights' sha256 and the command that replays the recipe. The method's description,
formula (layer-wise only), parameters and citation come from the method's own declaration.

Layering: reads a :class:`~hf_lwmm.result.MergeResult`; the executor calls it, it never imports the executor.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hf_lwmm.align import TensorStatus, alignment_counts
from hf_lwmm.methods import METHODS
from hf_lwmm.plotting import new_figure
from hf_lwmm.recipe import RECIPE_FORMAT, RECIPE_NAME
from hf_lwmm.result import MergeResult

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

PLOT_NAME = "lwmm_weights.png"
CARD_NAME = "README.md"
TEMPLATE_NAME = "lwmm_merge.md"
_MAX_ALIGNMENT_LINES = 20


def source_records(result: MergeResult) -> list[dict[str, Any]]:
    """One record per source: reference as given, resolved commit, role, label count, model type, weights' sha256."""
    from hf_lwmm.io import weights_sha256

    return [
        {
            "ref": str(model.ref),
            "commit": model.commit,
            "role": "anchor" if index == result.anchor else "source",
            "num_labels": model.num_labels,
            "model_type": model.model_type,
            "weights_sha256": weights_sha256(model.folder),
        }
        for index, model in enumerate(result.models)
    ]


def recipe_document(result: MergeResult) -> dict[str, Any]:
    """Content of ``lwmm_recipe.yaml``: the recipe, the resolved sources and the output hashes."""
    from hf_lwmm import __version__

    return {
        "lwmm_version": __version__,
        "recipe_format": RECIPE_FORMAT,
        "recipe": result.recipe.to_dict(),
        "sources": source_records(result),
        "weights_sha256": dict(result.sha256),
    }


def reproduce_command(result: MergeResult) -> str:
    """The command that replays the recorded recipe (any method; Hub sources pinned at their resolved commits)."""
    return shlex.join(["lwmm-hub", "merge", "--recipe", RECIPE_NAME, "--output", result.output_dir.name])


def method_description(result: MergeResult) -> dict[str, Any]:
    """What the card says about the method, generated from its declaration: summary, formula, parameters, citation."""
    method = METHODS[result.recipe.method]
    fields = method.Parameters.model_fields
    meaning = {**{name: field.description or "" for name, field in fields.items()}, **method.derived}
    parameters = [{"name": name, "value": value, "description": meaning.get(name, "")}
                  for name, value in result.method_parameters.items() if value is not None]
    return {"summary": method.summary, "formula": method.formula, "citation": method.citation, "parameters": parameters}


def plot_layer_weights(result: MergeResult, path: Path) -> None:
    """Each model's weight per shared layer, the anchor highlighted."""
    layers = result.layer_weights
    figure, axis = new_figure(max(6.0, len(layers) * 0.12), 3.2)
    for index, label in enumerate(result.alignment.labels):
        is_anchor = index == result.anchor
        axis.plot([row.index for row in layers], [row.weights[index] for row in layers],
                  linewidth=2.2 if is_anchor else 1.0, linestyle="-" if is_anchor else (0, (4, 1 + index)),
                  label=f"{label} (anchor)" if is_anchor else label)
    start = result.method_parameters.get("start_layer")
    if isinstance(start, int):
        axis.axvline(start, color="grey", linestyle=":", linewidth=1, label=f"start layer {start}")
    axis.set_xlabel("shared layer (shallow → deep)")
    axis.set_ylabel("weight")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(f"{result.recipe.method} merge: weight per layer")
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _alignment_details(result: MergeResult) -> dict[str, Any]:
    counts = alignment_counts(result.alignment)
    labels = result.alignment.labels
    details = []
    for tensor in result.alignment.tensors.values():
        if tensor.status is TensorStatus.SHAPE_MISMATCH:
            shapes = ", ".join(f"{list(shape)} in [{i}]" for i, shape in tensor.shapes.items())
            details.append(f"`{tensor.key}`: shapes differ ({shapes}) → anchor's")
        elif tensor.status is TensorStatus.PARTIAL:
            owners = ", ".join(f"[{i}]" for i in tensor.names)
            fate = "anchor's" if result.anchor in tensor.names else "dropped"
            details.append(f"`{tensor.key}`: only in {owners} → {fate}")
    if len(details) > _MAX_ALIGNMENT_LINES:
        more = f"… and {len(details) - _MAX_ALIGNMENT_LINES} more (`lwmm-hub align {' '.join(labels)}`)"
        details = details[:_MAX_ALIGNMENT_LINES] + [more]
    return {
        "shared": counts[TensorStatus.SHARED.value],
        "mismatched": counts[TensorStatus.SHAPE_MISMATCH.value],
        "partial": counts[TensorStatus.PARTIAL.value],
        "details": details,
    }


def build_card(result: MergeResult) -> ModelCard:
    """Render the card; metadata lists Hub sources as ``base_model`` and every source under ``lwmm_sources``."""
    from huggingface_hub import ModelCard, ModelCardData

    from hf_lwmm import __version__

    sources = source_records(result)
    hub_ids = list(dict.fromkeys(model.ref.repo_id for model in result.models if not model.ref.is_local))
    model_types = {source["model_type"] for source in sources if source["model_type"]}
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "tags": ["merge", "lwmm", f"lwmm-{result.recipe.method}", "image-segmentation", "semantic-segmentation", *sorted(model_types)],
        "lwmm_sources": [{key: value for key, value in source.items() if value is not None} for source in sources],
    }
    if hub_ids:
        metadata.update(base_model=hub_ids, base_model_relation="merge")
    if result.eval_results:
        metadata.update(model_name=result.output_dir.name, eval_results=result.eval_results)
    card_data = ModelCardData(**metadata)
    template = resources.files("hf_lwmm.model_cards").joinpath(TEMPLATE_NAME).read_text()
    recipe_yaml = yaml.safe_dump(recipe_document(result), sort_keys=False, allow_unicode=True).rstrip()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=result.output_dir.name,
        repo_hint=result.hub_repo or result.output_dir.name,
        tool_version=__version__,
        method=result.recipe.method,
        description=method_description(result),
        bn_stats=result.recipe.bn_stats,
        sources=sources,
        num_layers=len(result.layer_weights),
        layer_weights=result.layer_weights,
        alignment=_alignment_details(result),
        merged_tensors=result.merged_tensors,
        anchor_tensors=result.anchor_tensors,
        eval_results=result.eval_results,
        recipe_yaml=recipe_yaml,
        sha256=result.sha256,
        command=reproduce_command(result),
    )


def write_card_files(result: MergeResult, folder: Path) -> None:
    """Write ``lwmm_recipe.yaml``, the weight plot and ``README.md`` into ``folder``."""
    (folder / RECIPE_NAME).write_text(yaml.safe_dump(recipe_document(result), sort_keys=False, allow_unicode=True))
    plot_layer_weights(result, folder / PLOT_NAME)
    build_card(result).save(folder / CARD_NAME)
