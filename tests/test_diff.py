"""``lwmm-hub diff``: exact fractions on hand-made tensors and on models whose weights are set by hand."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import make_tiny_segformer
from hf_lwmm.cli import main
from hf_lwmm.diff import exceeding_counts, model_discrepancy, relative_difference
from hf_lwmm.errors import IncompatibleModelsError
from hf_lwmm.plan import plan_merge
from hf_lwmm.recipe import MergeRecipe


def _plan(first, second):
    return plan_merge(MergeRecipe(models=[first, second], method="isotropic"))


def test_relative_difference_is_symmetric_and_floored_by_epsilon():
    a = torch.tensor([1.0, -2.0, 0.0, 4.0, 1.0])
    b = torch.tensor([1.5, 2.0, 0.0, 3.0, 0.0])
    expected = torch.tensor([0.5 / 1.5, 4.0 / 2.0, 0.0, 1.0 / 4.0, 1.0], dtype=torch.float64)
    assert torch.equal(relative_difference(a, b), expected)
    assert torch.equal(relative_difference(b, a), expected)
    assert relative_difference(torch.tensor([1e-9]), torch.tensor([0.0]), epsilon=1e-6).item() == pytest.approx(1e-3)


def test_exceeding_counts_are_strict_per_tau():
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    b = torch.tensor([[1.0, 0.875], [0.5, 1.25], [2.0, 1.0]])
    # relative differences (exact in binary): 0, 0.125, 0.5, 0.2, 0, 2
    assert exceeding_counts(a, b, [0.0, 0.1, 0.2, 0.5, 2.0]) == (4, 4, 2, 1, 0)
    with pytest.raises(ValueError):
        exceeding_counts(a, b[:2], [0.1])


def perturb(folder, changes: dict[str, float]) -> None:
    """Scale the first ``fraction`` of the elements of each named tensor by 1.5 (relative difference 1/3)."""
    path = folder / "model.safetensors"
    tensors = {name: tensor.clone() for name, tensor in load_file(path).items()}
    for name, fraction in changes.items():
        flat = tensors[name].view(-1)
        flat[: round(fraction * flat.numel())] *= 1.5
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def pair(tmp_path):
    first = make_tiny_segformer(tmp_path / "a", seed=0)
    second = make_tiny_segformer(tmp_path / "b", seed=0)
    tensors = load_file(first / "model.safetensors")
    perturb(second, {"segformer.encoder.block.0.0.attention.self.query.weight": 0.5,   # 32 of 64
                     "decode_head.classifier.weight": 1.0,                                # 80 of 80
                     "decode_head.batch_norm.running_mean": 1.0})                         # a buffer: not compared
    return first, second, tensors


def test_model_discrepancy_counts_each_layer_exactly(pair):
    first, second, tensors = pair
    result = model_discrepancy(_plan(first, second), taus=[0.1, 0.5], progress=False)
    layers = {layer.layer: layer for layer in result.layers}
    block = [name for name in tensors if name.startswith("segformer.encoder.block.0.0.")]
    assert layers["block.0.0"].parameters == sum(tensors[name].numel() for name in block)
    assert layers["block.0.0"].exceeding == (32, 0)
    classifier = layers["classifier"]
    assert (classifier.parameters, classifier.exceeding) == (85, (80, 0))  # weight 5×16 changed, bias 5 not
    assert layers["batch_norm"].parameters == 32 and layers["batch_norm"].exceeding == (0, 0)  # weight + bias only
    assert all(layer.exceeding == (0, 0) for name, layer in layers.items() if name not in ("block.0.0", "classifier"))
    assert result.total.exceeding == (112, 0)
    assert result.total.parameters == sum(t.numel() for n, t in tensors.items() if t.is_floating_point() and "running_" not in n)
    assert [layer.layer for layer in result.layers][:3] == ["patch_embeddings.0", "block.0.0", "layer_norm.0"]


def test_diff_command_prints_table_and_writes_json_and_plot(pair, tmp_path, capsys):
    first, second, _ = pair
    output = tmp_path / "out"
    assert main(["diff", str(first), str(second), "--tau", "0.1", "0.5", "--json", str(output / "d.json"),
                 "--plot", str(output / "d.png")]) == 0
    document = json.loads((output / "d.json").read_text())
    rows = {row["layer"]: row for row in document["layers"]}
    assert rows["block.0.0"]["exceeding"] == [32, 0] and rows["all layers"]["exceeding"] == [112, 0]
    assert (output / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "> τ=0.1 %" in table and "classifier" in table


def test_models_without_a_shared_backbone_fail_with_one_line(tmp_path, capsys):
    first = make_tiny_segformer(tmp_path / "a", seed=0)
    other = make_tiny_segformer(tmp_path / "b", seed=0, hidden_sizes=[12, 20, 28, 36], num_attention_heads=[1, 2, 4, 4])
    with pytest.raises(IncompatibleModelsError):
        model_discrepancy(_plan(first, other), progress=False)
    assert main(["diff", str(first), str(first), "--tau", "-1"]) == 2
    assert "--tau" in capsys.readouterr().err
