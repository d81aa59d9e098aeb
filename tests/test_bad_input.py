"""Bad input: one clear line naming the input at fault, exit code 2, nothing written."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_lwmm.cli import main

from helpers import make_tiny_segformer


@pytest.fixture
def workspace(tmp_path):
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    return models, out_parent


def _fails(argv, capsys, *needles):
    capsys.readouterr()  # drop what building the models printed
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("lwmm-hub merge: error: "), lines
    err = lines[0]
    for needle in needles:
        assert needle in err, err
    return err


def _merge(models, out_parent, *extra):
    return ["merge", *map(str, models), "--output", str(out_parent / "merged"), *extra]


def _nothing_written(out_parent):
    assert list(out_parent.iterdir()) == []


def test_missing_path(workspace, capsys):
    models, out = workspace
    _fails(_merge([models[0], out.parent / "nope"], out), capsys, "nope", "no such folder")
    _nothing_written(out)


def test_folder_without_weights(workspace, capsys):
    models, out = workspace
    (models[1] / "model.safetensors").unlink()
    _fails(_merge(models, out), capsys, str(models[1]), "no safetensors weights")
    _nothing_written(out)


def test_pickle_weights_refused_unless_allowed(workspace, capsys):
    models, out = workspace
    weights = load_file(models[1] / "model.safetensors")
    (models[1] / "model.safetensors").unlink()
    torch.save(weights, models[1] / "pytorch_model.bin")
    _fails(_merge(models, out), capsys, str(models[1]), "pickle", "--allow-pickle")
    _nothing_written(out)
    assert main(_merge(models, out, "--allow-pickle")) == 0
    assert (out / "merged" / "model.safetensors").is_file()


def test_only_one_model(workspace, capsys):
    models, out = workspace
    _fails(_merge(models[:1], out), capsys, "at least two models")
    _nothing_written(out)


def test_anchor_not_among_inputs(workspace, capsys):
    models, out = workspace
    _fails(_merge(models, out, "--anchor", str(out.parent / "elsewhere")), capsys, "--anchor", "not among")
    _nothing_written(out)


def test_models_sharing_no_encoder(workspace, capsys):
    models, out = workspace
    other = make_tiny_segformer(out.parent / "wide", hidden_sizes=[12, 24, 36, 48], num_attention_heads=[1, 2, 3, 4])
    _fails(_merge([models[0], other], out), capsys, "share no encoder tensor")
    _nothing_written(out)


def test_different_encoder_depth(workspace, capsys):
    models, out = workspace
    deeper = make_tiny_segformer(out.parent / "deep", depths=[1, 1, 2, 1])
    _fails(_merge([models[0], deeper], out), capsys, str(deeper), "encoder depths [1, 1, 2, 1]")
    _nothing_written(out)


@pytest.mark.parametrize(("weights", "needle"), [("-0.5,1.5", "non-negative"), ("0.2,0.3,0.5", "3 given for 2 models"), ("0.2,0.3", "sum to 1")])
def test_bad_linear_weights(workspace, capsys, weights, needle):
    models, out = workspace
    _fails(_merge(models, out, "--method", "linear", f"--weights={weights}"), capsys, "--weights", needle)
    _nothing_written(out)


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "nan"])
def test_alpha_outside_unit_interval(workspace, capsys, alpha):
    models, out = workspace
    _fails(_merge(models, out, "--alpha", alpha), capsys, "--alpha", "[0, 1]")
    _nothing_written(out)


@pytest.mark.parametrize(("start", "needle"), [("19", "out of range"), ("-1", "out of range"), ("block.9.0", "no shared layer")])
def test_start_layer_out_of_range(workspace, capsys, start, needle):
    models, out = workspace
    _fails(_merge(models, out, "--start-layer", start), capsys, "--start-layer", needle)
    _nothing_written(out)


def test_truncated_safetensors(workspace, capsys):
    models, out = workspace
    path = models[1] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _fails(_merge(models, out), capsys, str(models[1]), "truncated")
    _nothing_written(out)


def test_corrupt_safetensors_header(workspace, capsys):
    models, out = workspace
    path = models[1] / "model.safetensors"
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + length] = b"{" * length
    path.write_bytes(bytes(data))
    _fails(_merge(models, out), capsys, "model.safetensors", "corrupt header")
    _nothing_written(out)


def test_merged_tensor_with_nan(workspace, capsys):
    models, out = workspace
    path = models[1] / "model.safetensors"
    weights = load_file(path)
    weights["segformer.encoder.block.1.0.mlp.dense2.weight"][0, 0] = float("nan")
    save_file(weights, path, metadata={"format": "pt"})
    _fails(_merge(models, out), capsys, "segformer.encoder.block.1.0.mlp.dense2.weight", "NaN or inf")
    _nothing_written(out)


def test_output_exists_and_is_not_empty(workspace, capsys):
    models, out = workspace
    target = out / "merged"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    _fails(_merge(models, out), capsys, str(target), "--overwrite")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert main(_merge(models, out, "--overwrite")) == 0
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in out.iterdir()] == ["merged"]


def test_unknown_recipe_key(workspace, capsys, tmp_path):
    models, out = workspace
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"models": [str(m) for m in models], "alpah": 0.3}))
    _fails(["merge", "--recipe", str(recipe), "--output", str(out / "merged")], capsys, "recipe field 'alpah': unknown field")
    _nothing_written(out)
