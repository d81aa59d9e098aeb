"""The merged model's card (``README.md``), recipe (``lwmm_recipe.yaml``) and weight plot.

The card is rendered with huggingface_hub's ``ModelCard.from_template`` from ``model_cards/lwmm_merge.md``
and records everything needed to reproduce the merge: sources at resolved revisions, per-layer weights,
the recipe, the weights' sha256 and the command that replays the recipe. The method's description,
formula (layer-wise only), parameters, per-layer table and citation come from the method's own declaration.

The card never shows a local path: a local source (or data folder) appears by its folder name and, for
sources, its weights' sha256. ``lwmm_recipe.yaml`` keeps the paths (a local replay needs them) until the
folder is pushed: :func:`published_files` is what a push uploads (paths → names, title → the repo).

Layering: reads a :class:`~hf_lwmm.result.MergeResult`; the executor calls it, it never imports the executor.
"""

from __future__ import annotations

import os
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hf_lwmm.align import TensorStatus, alignment_counts
from hf_lwmm.methods import METHODS, LayerTable
from hf_lwmm.plotting import Line, line_chart
from hf_lwmm.recipe import RECIPE_FORMAT, RECIPE_NAME, find_anchor
from hf_lwmm.result import CardEvaluation, MergeResult

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCardData

PLOT_NAME = "lwmm_weights.png"
CARD_NAME = "README.md"
TEMPLATE_NAME = "lwmm_merge.md"
_MAX_ALIGNMENT_LINES = 20
#: ``model-index`` needs a ``dataset.type`` (a Hub dataset id); a local folder has none, and says so
LOCAL_DATASET_TYPE = "local"
_USAGE = re.compile(r'(from_pretrained\(")[^"]*("\))')


def source_records(result: MergeResult) -> list[dict[str, Any]]:
    """One record per source: reference as given, resolved commit, role, label count, model type, weights' sha256.

    A local folder has no commit (``None``): that is what marks it local in a recipe file.
    """
    return [
        {
            "ref": str(model.ref),
            "commit": model.commit,
            "role": "anchor" if index == result.anchor else "source",
            "num_labels": model.num_labels,
            "model_type": model.model_type,
            "weights_sha256": result.source_sha256[index],
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


def local_name(text: str) -> str:
    """A local path as a published card names it: the folder's name."""
    return Path(text).expanduser().resolve().name


def _names_a_local_path(value: object) -> bool:
    return isinstance(value, str) and (os.path.isabs(os.path.expanduser(value)) or Path(value).expanduser().exists())


def published_document(document: dict[str, Any]) -> dict[str, Any]:
    """A recipe document without local paths: local sources (no commit) and local parameter values by folder name.

    Hub sources keep their ids and commits; the sources' weights sha256 stay, so a published recipe still
    says which weights were merged. The result is ``document`` itself when it names no local path.
    """
    records = document.get("sources") or []
    recipe = document.get("recipe") or {}
    local = [index for index, record in enumerate(records) if not record.get("commit")]
    parameters = recipe.get("parameters") or {}
    local_parameters = [name for name, value in parameters.items() if _names_a_local_path(value)]
    if not local and not local_parameters:
        return document
    models = list(recipe.get("models") or [])
    anchor = recipe.get("anchor")
    anchor_index = None if anchor is None else find_anchor([str(model) for model in models], anchor)
    published_models = [local_name(str(model)) if index in local else model for index, model in enumerate(models)]
    published_recipe = {**recipe, "models": published_models,
                        "parameters": {**parameters, **{name: local_name(parameters[name]) for name in local_parameters}}}
    if anchor_index is not None:
        published_recipe["anchor"] = published_models[anchor_index]
    published_records = [{**record, "ref": local_name(str(record["ref"]))} if index in local else record
                         for index, record in enumerate(records)]
    return {**document, "recipe": published_recipe, "sources": published_records}


def local_sources(document: dict[str, Any]) -> list[str]:
    """The recorded sources that are local folders (no commit), by folder name."""
    return [local_name(str(record["ref"])) for record in document.get("sources") or [] if not record.get("commit")]


def reproduce_command(result: MergeResult) -> str:
    """The command that replays the recorded recipe (any method; Hub sources pinned at their resolved commits)."""
    return shlex.join(["lwmm-hub", "merge", "--recipe", RECIPE_NAME, "--output", result.output_dir.name])


def method_description(result: MergeResult) -> dict[str, Any]:
    """What the card says about the method, generated from its declaration: summary, formula, parameters, citation."""
    method = METHODS[result.recipe.method]
    fields = method.Parameters.model_fields
    meaning = {**{name: field.description or "" for name, field in fields.items()}, **method.derived}
    parameters = [{"name": name, "value": local_name(str(value)) if _names_a_local_path(value) else value,
                   "description": meaning.get(name, "")}
                  for name, value in result.method_parameters.items() if value is not None]
    return {"summary": method.summary, "formula": method.formula, "citation": method.citation, "parameters": parameters}


def layer_table(result: MergeResult) -> LayerTable | None:
    """What the method shows per layer (``None``: the same weights everywhere, no table and no plot)."""
    return result.plan.method.layer_table(result.layer_weights)


def display_labels(result: MergeResult) -> list[str]:
    """The sources as the card names them: Hub references as given, local folders by their name."""
    return [local_name(str(model.ref)) if model.ref.is_local else str(model.ref) for model in result.models]


def plot_layer_weights(result: MergeResult, path: Path) -> None:
    """Each model's value per shared layer (the method's :class:`LayerTable`), the anchor highlighted."""
    table = layer_table(result)
    if table is None:
        return
    x = [row.index for row in table.rows]
    lines = [Line(f"{label} (anchor)" if index == result.anchor else label, x, [row.weights[index] for row in table.rows],
                  emphasised=index == result.anchor, dash=3 + index)
             for index, label in enumerate(display_labels(result))]
    start = result.method_parameters.get("start_layer")
    line_chart(path, lines, title=f"{result.recipe.method} merge: {table.quantity} per layer",
               x_label="shared layer (shallow to deep)", y_label=table.quantity, y_range=(0.0, 1.0),
               marker=(start, f"start layer {start}") if isinstance(start, int) else None,
               width=max(760, 14 * len(table.rows) + 120))


def _alignment_details(result: MergeResult) -> dict[str, Any]:
    counts = alignment_counts(result.alignment)
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
        more = f"… and {len(details) - _MAX_ALIGNMENT_LINES} more (`lwmm-hub align {' '.join(display_labels(result))}`)"
        details = details[:_MAX_ALIGNMENT_LINES] + [more]
    return {
        "shared": counts[TensorStatus.SHARED.value],
        "mismatched": counts[TensorStatus.SHAPE_MISMATCH.value],
        "partial": counts[TensorStatus.PARTIAL.value],
        "details": details,
    }


def model_index_results(evaluation: CardEvaluation) -> list[EvalResult]:
    """The merge's mean IoU (%) as ``model-index`` records it: a Hub dataset by id, revision and split; a local
    folder by its name, with :data:`LOCAL_DATASET_TYPE` where the spec requires a dataset id."""
    from huggingface_hub import EvalResult

    return [EvalResult(task_type="image-segmentation", task_name="Semantic Segmentation",
                       dataset_type=LOCAL_DATASET_TYPE if evaluation.local else evaluation.dataset, dataset_name=evaluation.dataset,
                       dataset_split=evaluation.split, dataset_revision=evaluation.revision, metric_type="mean_iou",
                       metric_name="mean IoU (%)", metric_value=round(100 * evaluation.merge_row.mean_iou, 4))]


def one_line_summary(result: MergeResult, labels: list[str]) -> str:
    """What was merged and why, for the top of the card."""
    model_types = sorted({model.model_type for model in result.models if model.model_type})
    kind = f"{'/'.join(model_types)} " if model_types else ""
    names = ", ".join(f"`{label}`" for label in labels)
    return (f"A **{result.recipe.method}** merge of {len(labels)} {kind}semantic-segmentation models ({names}; anchor "
            f"`{labels[result.anchor]}`) into one model: their adaptations combined in a single stock `transformers` "
            f"model, at the inference cost of one model instead of {len(labels)} for their output ensemble.")


def render_card(card_data: ModelCardData, template_name: str, **context: Any) -> str:
    """A card's text: the template (``hf_lwmm/model_cards/``) rendered as ``ModelCard.from_template`` renders it.

    The metadata is huggingface_hub's ``ModelCardData`` (validated, written the Hub's way), but the card is
    rendered here with jinja2: ``ModelCard`` itself would import the whole Hub client (0.3 s) to write a file.
    """
    import jinja2

    template = resources.files("hf_lwmm.model_cards").joinpath(template_name).read_text(encoding="utf-8")
    return jinja2.Template(template).render(card_data=card_data.to_yaml(), **{**card_data.to_dict(), **context})


def build_card(result: MergeResult) -> str:
    """The card's text; metadata lists Hub sources as ``base_model`` and every source under ``lwmm_sources``."""
    from huggingface_hub import ModelCardData

    from hf_lwmm import __version__

    document = recipe_document(result)
    published = published_document(document)
    sources = published["sources"]
    labels = display_labels(result)
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
    if result.evaluation is not None:
        metadata.update(model_name=result.title, eval_results=model_index_results(result.evaluation))
    return render_card(
        ModelCardData(**metadata),
        TEMPLATE_NAME,
        title=result.title,
        summary=one_line_summary(result, labels),
        repo_hint=result.hub_repo or result.output_dir.name,
        tool_version=__version__,
        method=result.recipe.method,
        description=method_description(result),
        bn_stats=result.recipe.bn_stats,
        sources=sources,
        layer_table=layer_table(result),
        plot_name=PLOT_NAME,
        num_layers=len(result.layer_weights),
        alignment=_alignment_details(result),
        merged_tensors=result.merged_tensors,
        anchor_tensors=result.anchor_tensors,
        evaluation=result.evaluation,
        recipe_yaml=yaml.safe_dump(published, sort_keys=False, allow_unicode=True).rstrip(),
        sha256=result.sha256,
        command=reproduce_command(result),
    )


def write_card_files(result: MergeResult, folder: Path) -> None:
    """Write ``lwmm_recipe.yaml``, the per-layer plot (when the method has a per-layer table) and ``README.md``."""
    (folder / RECIPE_NAME).write_text(yaml.safe_dump(recipe_document(result), sort_keys=False, allow_unicode=True))
    plot_layer_weights(result, folder / PLOT_NAME)
    (folder / CARD_NAME).write_text(build_card(result), encoding="utf-8")


def published_files(folder: Path, repo_id: str) -> dict[str, bytes]:
    """What a push uploads instead of the folder's ``README.md`` and ``lwmm_recipe.yaml``: the card titled and
    used as ``repo_id``, the recipe without local paths. Files that need no change are left out (uploaded as they are)."""
    from huggingface_hub import ModelCard, ModelCardData

    from hf_lwmm.recipe import read_recipe_document

    replaced: dict[str, bytes] = {}
    if not (folder / RECIPE_NAME).is_file():
        return replaced  # not a merge (e.g. a converted checkpoint): pushed as it is
    document = read_recipe_document(folder / RECIPE_NAME, written_by_merge=True)
    published = published_document(document)
    if published is not document:
        replaced[RECIPE_NAME] = yaml.safe_dump(published, sort_keys=False, allow_unicode=True).encode()
    card_path = folder / CARD_NAME
    if card_path.is_file():
        text = card_path.read_text(encoding="utf-8")
        card = ModelCard(text)
        body = _retitled(card.text, repo_id)
        data = card.data
        assert isinstance(data, ModelCardData)
        if data.eval_results and data.model_name != repo_id:
            data.model_name = repo_id  # the model-index's name
            card.text = body
            replaced[CARD_NAME] = str(card).encode()
        elif body != card.text:
            replaced[CARD_NAME] = (text[: len(text) - len(card.text)] + body).encode()
    return replaced


def _retitled(body: str, repo_id: str) -> str:
    """The card's body with its title and usage snippet naming ``repo_id``."""
    body = re.sub(r"^# .*$", lambda _: f"# {repo_id}", body, count=1, flags=re.MULTILINE)
    return _USAGE.sub(lambda match: f"{match[1]}{repo_id}{match[2]}", body)
