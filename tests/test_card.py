"""The merged model's card as a Hub user reads it: title, summary, each method's own description, per-layer
table and plot, results, model-index, no local paths and no ``None``; push retitles it; the Hub validates it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, RepoCard
from PIL import Image

from helpers import make_tiny_segformer
from hf_lwmm.card import LOCAL_DATASET_TYPE, model_index_results
from hf_lwmm.cli import main
from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.evaluation.runner import Predictor, evaluate_predictors
from hf_lwmm.layers import layer_of
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.result import CardEvaluation, EvaluatedRow
from hf_lwmm.schedules import DEFAULT_START_LAYER, start_layer_in
from hub_server import HubServer, hub  # noqa: F401  (hub: fixture)
from test_eval import tiny_samples, write_paired_folder

QUIET = RunOptions(progress=False)
FORMULA = "λa(l) = α + (1 − α)(l − s)/(L − s)"
MATENA = "Matena & Raffel, *Merging Models with Fisher-Weighted Averaging*, NeurIPS 2022"


@pytest.fixture(scope="module")
def method_cards(tmp_path_factory):
    """One merge of the same two tiny models per method (Fisher on a local folder of 2 images)."""
    root = tmp_path_factory.mktemp("cards")
    models = [make_tiny_segformer(root / f"m{i}", seed=i) for i in range(2)]
    (root / "target" / "images").mkdir(parents=True)
    for index, colour in enumerate([(10, 120, 200), (200, 30, 60)]):
        Image.new("RGB", (20, 20), colour).save(root / "target" / "images" / f"{index}.png")
    parameters = {"layerwise": {"alpha": 0.4}, "isotropic": {}, "linear": {"weights": [0.25, 0.75]},
                  "fisher": {"fisher_data": str(root / "target"), "fisher_samples": 5}}
    merged = {}
    for method, values in parameters.items():
        result = merge(MergeRecipe(models=models, method=method, parameters=values), root / method, QUIET)
        merged[method] = (result, (root / method / "README.md").read_text())
    return root, merged


def test_each_method_describes_itself(method_cards):
    root, merged = method_cards
    cards = {method: text for method, (_, text) in merged.items()}
    for method, text in cards.items():
        body = ModelCard(text).text.lstrip()
        title, _, rest = body.partition("\n")
        assert title == f"# {method}"  # not pushed, no --name: the folder's name
        assert rest.lstrip().startswith(f"A **{method}** merge of 2 segformer semantic-segmentation models (`m0`, `m1`; anchor `m0`)")
        assert "None" not in text and str(root) not in text
        assert f"lwmm-hub merge --recipe lwmm_recipe.yaml --output {method}" in text
    assert FORMULA in cards["layerwise"] and all(FORMULA not in cards[m] for m in ("isotropic", "linear", "fisher"))
    assert "| `alpha` | `0.4` | anchor weight α in the early layers" in cards["layerwise"]
    layers = [entry.layer for entry in merged["layerwise"][0].plan.layer_weights]
    start = start_layer_in(DEFAULT_START_LAYER, layers)  # the default, resolved on these models' layers
    assert f"| `start_layer` | `{start}` |" in cards["layerwise"] and f"| `start_layer_name` | `{layers[start]}` |" in cards["layerwise"]
    assert "| `weights` | `[0.25, 0.75]` | per-model weights" in cards["linear"]
    assert "isotropic merging: uniform mean of every shared tensor" in cards["isotropic"] and "| parameter |" not in cards["isotropic"]
    assert MATENA in cards["fisher"] and all(MATENA not in cards[m] for m in ("layerwise", "isotropic", "linear"))
    # the Fisher data as used: the folder by name, the images actually found (2, not the 5 asked for)
    assert "| `fisher_data` | `target` |" in cards["fisher"] and "| `fisher_images` | `2` | images each model's Fisher" in cards["fisher"]
    assert "| `fisher_samples` | `5` |" in cards["fisher"]


def test_per_layer_table_and_plot_only_where_they_mean_something(method_cards):
    root, merged = method_cards
    cards = {method: text for method, (_, text) in merged.items()}
    assert "![weight of each model per layer](lwmm_weights.png)" in cards["layerwise"]
    assert "| 0 | `patch_embeddings.0` | 0.4000 | 0.6000 |" in cards["layerwise"]
    for method in ("isotropic", "linear"):  # the same weights in every layer: no table, no plot
        assert "## Per-layer" not in cards[method] and not (root / method / "lwmm_weights.png").exists()
    assert (root / "layerwise" / "lwmm_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Fisher: no flat 0.5 per layer, but each model's share of the layer's Fisher mass, from the Fisher itself
    result, fisher = merged["fisher"]
    assert "## Per-layer share of Fisher mass" in fisher and "![share of Fisher mass of each model per layer](lwmm_weights.png)" in fisher
    assert "| 0 | `patch_embeddings.0` | 0.5000 | 0.5000 |" not in fisher
    for layer in result.plan.layers[:3]:
        masses = [sum(float(t.sum()) for key, t in model.items() if layer_of(key) == layer) for model in result.plan.method.fishers]
        index = result.plan.layers.index(layer)
        assert f"| {index} | `{layer}` | {masses[0] / sum(masses):.4f} | {masses[1] / sum(masses):.4f} |" in fisher


def test_card_title_is_the_hub_repo_else_the_name_else_the_folder(tiny_models, tmp_path):
    models = [str(m) for m in tiny_models[:2]]
    assert main(["merge", *models, "--name", "Dusk merge", "-o", str(tmp_path / "named")]) == 0
    named = ModelCard.load(tmp_path / "named" / "README.md").text
    assert "\n# Dusk merge\n" in named and 'from_pretrained("named")' in named
    merge(MergeRecipe(models=models), tmp_path / "for-hub", QUIET, hub_repo="me/dusk", name="ignored when pushing")
    for_hub = ModelCard.load(tmp_path / "for-hub" / "README.md").text
    assert "\n# me/dusk\n" in for_hub and 'from_pretrained("me/dusk")' in for_hub and "ignored" not in for_hub


def test_results_table_and_model_index_of_merge_eval_dataset(tmp_path):
    models = [str(make_tiny_segformer(tmp_path / f"model_{i}", seed=i)) for i in range(2)]
    data = write_paired_folder(tmp_path / "dusk", tiny_samples(count=3))
    output = tmp_path / "merged"
    assert main(["merge", *models, "-o", str(output), "--eval-dataset", str(data), "--eval-ensemble"]) == 0
    expected = evaluate_predictors([("a", Path(models[0])), ("b", Path(models[1])), ("m", output)],
                                   [Predictor("a", (0,)), Predictor("b", (1,)), Predictor("m", (2,)), Predictor("e", (0, 1))],
                                   load_segmentation_data(str(data)), progress=False)
    miou = [row.mean_iou for row in expected.rows]
    card = ModelCard.load(output / "README.md")
    assert "None" not in card.content and str(tmp_path) not in card.content
    assert "mean IoU (%) on **dusk** (a local folder), split —, the whole folder, 3 images" in card.text
    rows = [f"| `model_0` | anchor | {100 * miou[0]:.2f} | 1× |", f"| `model_1` | source | {100 * miou[1]:.2f} | 1× |",
            f"| **merged** | merge | {100 * miou[2]:.2f} | 1× |", f"| `ensemble of 2` | ensemble | {100 * miou[3]:.2f} | 2× |"]
    assert "\n".join(rows) in card.text
    (result,) = card.data.eval_results
    assert (result.task_type, result.metric_type) == ("image-segmentation", "mean_iou")
    dataset = (result.dataset_type, result.dataset_name, result.dataset_split, result.dataset_revision)
    assert dataset == (LOCAL_DATASET_TYPE, "dusk", None, None)
    assert result.metric_value == pytest.approx(100 * miou[2], abs=1e-4) and card.data.model_name == "merged"


def test_model_index_keeps_a_hub_dataset_id_revision_and_split():
    evaluation = CardEvaluation("org/dusk-val", False, "validation", "abc123", 40, [EvaluatedRow("me/m", "merge", 0.41237, 1)])
    (result,) = model_index_results(evaluation)
    assert (result.dataset_type, result.dataset_name, result.dataset_split, result.dataset_revision) == (
        "org/dusk-val", "org/dusk-val", "validation", "abc123")
    assert result.metric_value == 41.237


def test_push_publishes_no_local_path_retitles_the_card_and_warns(hub: HubServer, tiny_models, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    data = write_paired_folder(tmp_path / "dusk", tiny_samples(count=2))
    output = tmp_path / "merged"
    assert main(["merge", *map(str, tiny_models[:2]), "-o", str(output), "--eval-dataset", str(data)]) == 0
    capfd.readouterr()
    repo_id = f"{hub.user}/dusk-merge"
    assert main(["push", str(output), repo_id]) == 0
    warning = capfd.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "2 source(s) are local folders (model_0, model_1)" in warning[0]
    assert "cannot be reproduced from the Hub" in warning[0] and "push the sources first" in warning[0]

    api = HfApi()
    for name in api.list_repo_files(repo_id):
        assert str(tmp_path).encode() not in Path(api.hf_hub_download(repo_id, name)).read_bytes(), name
    card = ModelCard.load(api.hf_hub_download(repo_id, "README.md"))
    assert f"\n# {repo_id}\n" in card.text and f'from_pretrained("{repo_id}")' in card.text and card.data.model_name == repo_id
    card.validate()  # the Hub's own metadata check (model-index included)
    recipe = yaml.safe_load(Path(api.hf_hub_download(repo_id, "lwmm_recipe.yaml")).read_text())
    assert recipe["recipe"]["models"] == ["model_0", "model_1"] and recipe["recipe"]["anchor"] is None
    digests = [hashlib.sha256((m / "model.safetensors").read_bytes()).hexdigest() for m in tiny_models[:2]]
    assert [(s["ref"], s["commit"], s["weights_sha256"]["model.safetensors"]) for s in recipe["sources"]] == [
        ("model_0", None, digests[0]), ("model_1", None, digests[1])]
    # the local folder keeps what a local replay needs
    assert yaml.safe_load((output / "lwmm_recipe.yaml").read_text())["recipe"]["models"] == [str(m) for m in tiny_models[:2]]


def test_the_hub_validation_refuses_a_model_index_without_a_dataset_type(hub: HubServer):
    card = RepoCard("---\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-segmentation}\n"
                     "    dataset: {name: dusk}\n    metrics: [{type: mean_iou, value: 41.2}]\n---\n# m\n")
    with pytest.raises(ValueError, match=r"dataset\.type"):
        card.validate(repo_type="model")


def test_push_sources_pushes_local_folders_first_and_the_card_records_them(hub: HubServer, tiny_models, tmp_path, monkeypatch,
                                                                           capfd):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    repo_id = f"{hub.user}/merged"
    models = [str(m) for m in tiny_models[:2]]
    assert main(["merge", *models, "--anchor", models[1], "-o", str(tmp_path / "out"), "--push-to-hub", repo_id,
                 "--push-sources", hub.user]) == 0
    assert "warning" not in capfd.readouterr().err
    api = HfApi()
    sources = [f"{hub.user}/model_0", f"{hub.user}/model_1"]
    commits = [api.model_info(source).sha for source in sources]
    for source, folder in zip(sources, tiny_models):
        pushed = Path(api.hf_hub_download(source, "model.safetensors")).read_bytes()
        assert pushed == (folder / "model.safetensors").read_bytes()
    card = ModelCard.load(api.hf_hub_download(repo_id, "README.md"))
    assert card.data.base_model == sources and [s["commit"] for s in card.data.lwmm_sources] == commits
    assert [s["role"] for s in card.data.lwmm_sources] == ["source", "anchor"] and str(tmp_path) not in card.content
    recipe = yaml.safe_load(Path(api.hf_hub_download(repo_id, "lwmm_recipe.yaml")).read_text())
    assert recipe["recipe"]["models"] == [f"{s}@{c}" for s, c in zip(sources, commits)]
    assert main(["reproduce", repo_id]) == 0  # from the Hub alone


def test_push_sources_without_push_to_hub_is_one_line(tiny_models, tmp_path, capsys):
    assert main(["merge", *map(str, tiny_models[:2]), "-o", str(tmp_path / "out"), "--push-sources", "me"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("only with --push-to-hub (the sources are pushed so that "
                                                                     "the pushed merge names them)")
    assert not (tmp_path / "out").exists()


def test_the_card_plot_draws_each_line_where_its_values_are(tmp_path):
    from PIL import Image

    from hf_lwmm.plotting import PALETTE, Line, line_chart

    line_chart(tmp_path / "chart.png", [Line("anchor", [0, 10], [0.5, 0.5], emphasised=True), Line("other", [0, 10], [0.0, 1.0])],
               title="t", x_label="x", y_label="y", y_range=(0.0, 1.0), marker=(5, "start"), width=470, height=400)
    image = Image.open(tmp_path / "chart.png").convert("RGB")
    assert image.size == (470, 400)
    # the plot area spans x 70…450 and y 348…36: value (x, y) lies at (70 + 38x, 348 − 312y)
    def colour(hex_code: str) -> tuple[int, ...]:
        return tuple(int(hex_code[i:i + 2], 16) for i in (1, 3, 5))
    assert image.getpixel((70 + 38 * 8, 348 - 156)) == colour(PALETTE[0])  # the thick anchor line at 0.5
    assert image.getpixel((70 + 38 * 9, 348 - 62)) == (255, 255, 255)  # nothing drawn where no line passes
