"""The typed recipe: every wrong field is one error naming it; files round-trip; run options never enter a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_lwmm import MergeRecipe, RecipeError, RunOptionError, RunOptions, load_recipe, merge
from hf_lwmm.cli import main
from hf_lwmm.methods.fisher import FisherParameters
from hf_lwmm.methods.layerwise import LayerwiseParameters

from helpers import make_tiny_segformer

QUIET = RunOptions(progress=False)


@pytest.fixture
def pair(tmp_path):
    return [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]


@pytest.mark.parametrize(("changes", "field", "needle"), [
    ({"parameters": {"alpha": "high"}}, "alpha", "valid number (got 'high')"),
    ({"parameters": {"alpha": 1.5}}, "alpha", "1.5: must lie in [0, 1]"),
    ({"parameters": {"start_layer": [1, 2]}}, "start_layer", "got [1, 2]"),
    ({"parameters": {"schedule": "cubic"}}, "schedule", "'cubic': unknown (choose from linear)"),
    ({"models": [42, 43]}, "models[0]", "valid string (got 42)"),
    ({"models": ["a-folder-that-is-not-a-repo-id"]}, "models", "need at least two models"),
    ({"max_shard_size": 12}, "max_shard_size", "valid string (got 12)"),
    ({"max_shard_size": "5XB"}, "max_shard_size", "'5XB': not a size"),
    ({"max_shard_size": "0"}, "max_shard_size", "'0': must be at least one byte"),
    ({"bn_stats": "mean"}, "bn_stats", "got 'mean'"),
    ({"dtype": "float8"}, "dtype", "got 'float8'"),
    ({"method": "median"}, "method", "'median': unknown (choose from layerwise, isotropic, linear, fisher)"),
    ({"method": "linear"}, "weights", "required"),
    ({"method": "linear", "parameters": {"weights": [0.5, "x"]}}, "weights[1]", "valid number"),
    ({"method": "linear", "parameters": {"weights": [0.2, 0.2, 0.6]}}, "weights", "3 given for 2 models"),
    ({"method": "isotropic", "parameters": {"alpha": 0.5}}, "alpha", "not a parameter of method isotropic (its parameters: none)"),
    ({"method": "fisher", "parameters": {"fisher_data": "x", "fisher_samples": 0}}, "fisher_samples", "0: must be a positive integer"),
    ({"method": "fisher", "parameters": {"fisher_data": "x", "fisher_samples": "4"}}, "fisher_samples", "valid integer"),
    ({"anchor": 3}, "anchor", "valid string"),
    ({"anchor": "/elsewhere"}, "anchor", "not among the models"),
    ({"alpha": 0.5}, "alpha", "a method parameter: write it under 'parameters:'"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"allow_pickle": "no"}, "allow_pickle", "how a run executes, not what is merged"),
    ({"device": "cuda"}, "device", "how a run executes"),
])
def test_each_wrong_field_is_one_error_naming_it(pair, changes, field, needle):
    fields = {"models": [str(m) for m in pair], **changes}
    with pytest.raises(RecipeError) as caught:
        MergeRecipe(**fields)
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"recipe field {field!r}: ") and needle in message and "\n" not in message


def test_paths_are_stored_as_strings_and_the_recipe_is_frozen(pair):
    recipe = MergeRecipe(models=pair, anchor=pair[1], parameters=LayerwiseParameters(alpha=0.25))
    assert recipe.models == [str(m) for m in pair] and recipe.anchor == str(pair[1]) and recipe.anchor_index == 1
    assert recipe.parameters == LayerwiseParameters(alpha=0.25, start_layer=None, schedule="linear")
    with pytest.raises(Exception, match="frozen"):
        recipe.method = "isotropic"  # type: ignore[misc]
    with pytest.raises(RecipeError, match="FisherParameters given for method layerwise"):
        MergeRecipe(models=pair, parameters=FisherParameters(fisher_data="x"))
    assert recipe.replace(max_shard_size="10KB").max_shard_bytes == 10_000


def test_run_options_are_strict_too():
    with pytest.raises(RunOptionError, match="run option 'allow_pickle': Input should be a valid boolean"):
        RunOptions(allow_pickle="no")
    with pytest.raises(RunOptionError, match="run option 'devices': unknown field"):
        RunOptions(devices="cpu")


@pytest.mark.parametrize("method", ["layerwise", "isotropic", "linear", "fisher"])
def test_recipe_round_trips_through_yaml(pair, tmp_path, method):
    parameters = {"layerwise": {"alpha": 0.6, "start_layer": "block.2.0"}, "isotropic": {},
                  "linear": {"weights": [0.25, 0.75]}, "fisher": {"fisher_data": "org/images", "fisher_samples": 3}}[method]
    recipe = MergeRecipe(models=pair, method=method, parameters=parameters, dtype="float16", max_shard_size="1GB")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert load_recipe(path) == recipe
    assert MergeRecipe.from_dict(recipe.to_dict()) == recipe


def test_written_recipe_replays_bit_identically_without_run_options(pair, tmp_path):
    first = merge(MergeRecipe(models=pair, parameters={"alpha": 0.7, "start_layer": 3}), tmp_path / "one",
                  RunOptions(device="cpu", allow_pickle=True, progress=False))
    document = yaml.safe_load((tmp_path / "one" / "lwmm_recipe.yaml").read_text())
    assert document["recipe_format"] == 2 and "device" not in document["recipe"] and "allow_pickle" not in document["recipe"]
    assert main(["merge", "--recipe", str(tmp_path / "one" / "lwmm_recipe.yaml"), "--output", str(tmp_path / "two")]) == 0
    assert yaml.safe_load((tmp_path / "two" / "lwmm_recipe.yaml").read_text())["weights_sha256"] == first.sha256


def test_legacy_recipe_from_a_gpu_machine_replays_on_the_cpu(pair, tmp_path):
    """A file written before the typed recipe: flat method fields, and how that run executed (cuda, pickles)."""
    expected = merge(MergeRecipe(models=pair, method="linear", parameters={"weights": [0.3, 0.7]}), tmp_path / "new", QUIET)
    legacy = {"lwmm_version": "0.1.0",
              "recipe": {"models": [str(m) for m in pair], "anchor": None, "method": "linear", "alpha": None, "start_layer": None,
                         "schedule": "linear", "weights": [0.3, 0.7], "bn_stats": "gaussian", "dtype": None, "device": "cuda",
                         "max_shard_size": "5GB", "allow_pickle": True, "method_options": {}},
              "sources": [{"ref": str(m), "commit": None, "role": "source"} for m in pair], "weights_sha256": {}}
    path = tmp_path / "lwmm_recipe.yaml"
    path.write_text(yaml.safe_dump(legacy))
    recipe = load_recipe(path)
    assert recipe == MergeRecipe(models=pair, method="linear", parameters={"weights": [0.3, 0.7]})
    assert merge(recipe, tmp_path / "replayed", RunOptions(device="cpu", progress=False)).sha256 == expected.sha256


def test_legacy_fisher_options_move_under_parameters(pair, tmp_path):
    legacy = {"recipe": {"models": [str(m) for m in pair], "method": "fisher", "alpha": None, "schedule": "linear", "weights": None,
                         "method_options": {"fisher_data": "imgs", "fisher_samples": 2}, "device": "auto", "allow_pickle": False},
              "sources": [{"ref": str(m)} for m in pair]}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(legacy))
    assert load_recipe(path).parameters == FisherParameters(fisher_data="imgs", fisher_samples=2)


def test_hub_sources_are_pinned_when_a_recipe_is_read(tmp_path):
    document = {"recipe_format": 2, "recipe": {"models": ["org/a", "org/b@v1"], "anchor": "org/b@v1", "method": "isotropic"},
                "sources": [{"ref": "org/a", "commit": "a" * 40}, {"ref": "org/b@v1", "commit": "b" * 40}]}
    path = tmp_path / "lwmm_recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    recipe = load_recipe(path)
    assert recipe.models == [f"org/a@{'a' * 40}", f"org/b@{'b' * 40}"] and recipe.anchor_index == 1


@pytest.mark.parametrize(("content", "needle"), [
    (b"models: [a, b]\nalpha: \xff\xfe\n", "not UTF-8 text (byte 22)"),
    (b"models: [a, b\n", "not valid YAML at line 2"),
    (b"- a\n- b\n", "not a YAML mapping"),
])
def test_unreadable_recipe_files_are_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    assert main(["merge", "--recipe", str(path), "--output", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lwmm-hub merge: error: recipe {path}: ") and needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_pickle_switch_in_a_recipe_file_is_refused(pair, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"models": [str(m) for m in pair], "allow_pickle": "no"}))
    assert main(["merge", "--recipe", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lwmm-hub merge: error: recipe field 'allow_pickle': says how a run executes") and str(path) in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "isotropic", "--alpha", "0.3"], "--alpha: not a parameter of --method isotropic (its parameters: none)"),
    (["--fisher-data", "imgs"], "--fisher-data: not a parameter of --method layerwise (its parameters: --alpha, --start-layer, --schedule)"),
    (["--method", "linear", "--start-layer", "3", "--weights", "0.5,0.5"], "--start-layer: not a parameter of --method linear"),
    (["--method", "linear"], "--method linear needs --weights (per-model weights"),
    (["--alpha", "1.5"], "--alpha 1.5: must lie in [0, 1]"),
    (["--schedule", "cubic"], "--schedule 'cubic': unknown (choose from linear)"),
    (["--start-layer", "block.7.0"], "--start-layer 'block.7.0': no shared layer of that name"),
    (["--max-shard-size", "5XB"], "--max-shard-size '5XB': not a size"),
])
def test_method_flags_are_checked_against_the_method(pair, tmp_path, capsys, flags, message):
    assert main(["merge", *map(str, pair), *flags, "--output", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"lwmm-hub merge: error: {message}"), lines
    assert not (tmp_path / "out").exists()


def test_every_method_parameter_has_a_flag_with_its_description():
    from hf_lwmm.cli import build_parser

    merge_parser = build_parser()._subparsers._group_actions[0].choices["merge"]  # type: ignore[union-attr]
    helps = {action.option_strings[0]: action.help for action in merge_parser._actions if action.option_strings}
    assert helps["--alpha"] == "layerwise: anchor weight α in the early layers, in [0, 1] (default: 1/M)"
    assert helps["--start-layer"].endswith("(default: linear_fuse)")
    assert helps["--weights"].startswith("linear, fisher: per-model weights")
    assert {"--fisher-data", "--fisher-samples", "--fisher-split", "--start-layer", "--schedule"} <= set(helps)


def test_path_models_merge_like_strings(pair, tmp_path):
    assert merge(MergeRecipe(models=pair), tmp_path / "a", QUIET).sha256 == \
        merge(MergeRecipe(models=[str(Path(m)) for m in pair]), tmp_path / "b", QUIET).sha256
