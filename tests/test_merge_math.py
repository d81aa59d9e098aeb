"""Exact tensor math of every merge method, on tiny SegFormers built in the test."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_lwmm.recipe import RunOptions
from hf_lwmm import MergeRecipe, merge
from hf_lwmm.layers import order_layers
from hf_lwmm.methods.functional import fisher_weighted_average, gaussian_bn_stats, weighted_average
from hf_lwmm.plan import Rule, plan_merge
from hf_lwmm.schedules import layerwise_weights, linear_schedule

from helpers import make_tiny_segformer

QUIET = RunOptions(progress=False)

FIRST = "segformer.encoder.patch_embeddings.0.proj.weight"
MID = "segformer.encoder.block.3.0.mlp.dense1.weight"
CLASSIFIER = "decode_head.classifier.weight"
BN = "decode_head.batch_norm"


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _layer_index(layer: str, models) -> int:
    keys = [k.removeprefix("segformer.") for k in _weights(models[0])]
    return order_layers(keys).index(layer)


def test_first_layer_is_alpha_weighted_mean(tiny_models, tmp_path):
    alpha = 0.5
    merge(MergeRecipe(models=[str(m) for m in tiny_models], anchor=str(tiny_models[1]), parameters={"alpha": alpha, "start_layer": 4}), tmp_path / "out", QUIET)
    sources = [_weights(m)[FIRST] for m in tiny_models]
    expected = alpha * sources[1] + 0.25 * sources[0] + 0.25 * sources[2]
    torch.testing.assert_close(_weights(tmp_path / "out")[FIRST], expected, rtol=0, atol=1e-7)


def test_mid_layer_follows_the_linear_ramp(tiny_models, tmp_path):
    alpha, start = 0.2, 3
    merge(MergeRecipe(models=[str(m) for m in tiny_models], parameters={"alpha": alpha, "start_layer": start}), tmp_path / "out", QUIET)
    layer = _layer_index("block.3.0", tiny_models)
    num_layers = 19  # 4 stages × (patch embed, block, norm) + linear_c×4 + fuse + bn + classifier
    anchor_weight = alpha + (1 - alpha) * (layer - start) / (num_layers - start)
    other = (1 - anchor_weight) / 2
    sources = [_weights(m)[MID] for m in tiny_models]
    expected = anchor_weight * sources[0] + other * (sources[1] + sources[2])
    torch.testing.assert_close(_weights(tmp_path / "out")[MID], expected, rtol=1e-6, atol=1e-7)
    assert layer == 10 and anchor_weight == pytest.approx(0.2 + 0.8 * 7 / 16)


def test_classifier_is_the_anchors_when_class_counts_differ(tmp_path):
    models = [make_tiny_segformer(tmp_path / "a", num_labels=5, seed=0), make_tiny_segformer(tmp_path / "b", num_labels=3, seed=1)]
    result = merge(MergeRecipe(models=[str(m) for m in models], anchor=str(models[1])), tmp_path / "out", QUIET)
    merged, anchor = _weights(tmp_path / "out"), _weights(models[1])
    assert torch.equal(merged[CLASSIFIER], anchor[CLASSIFIER])
    assert torch.equal(merged["decode_head.classifier.bias"], anchor["decode_head.classifier.bias"])
    assert "classifier" not in [row.layer for row in result.layer_weights]
    assert not torch.equal(merged[FIRST], anchor[FIRST])


def test_batchnorm_statistics_follow_the_gaussian_mixture(tiny_models, tmp_path):
    merge(MergeRecipe(models=[str(m) for m in tiny_models], method="isotropic"), tmp_path / "out", QUIET)
    means = torch.stack([_weights(m)[f"{BN}.running_mean"] for m in tiny_models])
    variances = torch.stack([_weights(m)[f"{BN}.running_var"] for m in tiny_models])
    mean = means.mean(0)
    variance = (variances + means**2).mean(0) - mean**2
    merged = _weights(tmp_path / "out")
    torch.testing.assert_close(merged[f"{BN}.running_mean"], mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged[f"{BN}.running_var"], variance, rtol=1e-5, atol=1e-6)
    assert (merged[f"{BN}.running_var"] > variances.mean(0)).all()  # spread of the means adds variance


@pytest.mark.parametrize("mode", ["anchor", "linear"])
def test_batchnorm_modes(tiny_models, tmp_path, mode):
    merge(MergeRecipe(models=[str(m) for m in tiny_models], method="isotropic", bn_stats=mode), tmp_path / "out", QUIET)
    variances = [_weights(m)[f"{BN}.running_var"] for m in tiny_models]
    expected = variances[0] if mode == "anchor" else torch.stack(variances).mean(0)
    torch.testing.assert_close(_weights(tmp_path / "out")[f"{BN}.running_var"], expected, rtol=1e-6, atol=1e-7)


def test_num_batches_tracked_stays_int64_from_the_anchor(tiny_models, tmp_path):
    merge(MergeRecipe(models=[str(m) for m in tiny_models], anchor=str(tiny_models[2])), tmp_path / "out", QUIET)
    tracked = _weights(tmp_path / "out")[f"{BN}.num_batches_tracked"]
    assert tracked.dtype == torch.int64 and int(tracked) == 12


def test_linear_weights_and_output_dtype(tiny_models, tmp_path):
    weights = [0.5, 0.3, 0.2]
    merge(MergeRecipe(models=[str(m) for m in tiny_models], method="linear", parameters={"weights": weights}, dtype="float16"), tmp_path / "out", QUIET)
    merged = _weights(tmp_path / "out")
    expected = sum(w * _weights(m)[MID] for w, m in zip(weights, tiny_models))
    assert merged[MID].dtype == torch.float16
    torch.testing.assert_close(merged[MID], expected.half())


def test_merge_is_bit_identical_across_runs(tiny_models, tmp_path):
    recipe = MergeRecipe(models=[str(m) for m in tiny_models])
    first = merge(recipe, tmp_path / "one", QUIET)
    second = merge(recipe, tmp_path / "two", QUIET)
    assert first.sha256 == second.sha256


def test_pure_functions():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.equal(weighted_average([a, b], [0.25, 0.75]), torch.tensor([2.5, 5.0]))
    mean, var = gaussian_bn_stats([torch.tensor([0.0]), torch.tensor([2.0])], [torch.tensor([1.0]), torch.tensor([1.0])], [0.5, 0.5])
    assert mean.item() == 1.0 and var.item() == pytest.approx(2.0)  # 0.5·(1+0) + 0.5·(1+4) − 1
    merged = fisher_weighted_average([a, b], [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0])], [0.5, 0.5], epsilon=0.0)
    assert torch.equal(merged, torch.tensor([2.5, 6.0]))
    plan = layerwise_weights(["l0", "l1", "l2", "l3"], num_models=3, anchor=2, alpha=0.4, start=2)
    assert [round(row.weights[2], 6) for row in plan] == [0.4, 0.4, 0.4, 0.7]
    assert plan[3].weights[:2] == pytest.approx((0.15, 0.15))
    assert linear_schedule(0, 4, 1.0, 0) == 1.0


@pytest.mark.parametrize("recipe", [{"method": "isotropic"}, {"method": "layerwise", "bn_stats": "gaussian"},
                                    {"method": "linear", "parameters": {"weights": [0.2, 0.3, 0.5]}, "dtype": "bfloat16"}],
                         ids=["isotropic", "layerwise", "linear-bf16"])
def test_small_neighbours_averaged_as_one_are_the_bytes_of_each_averaged_alone(tiny_models, tmp_path, monkeypatch, recipe):
    """The executor averages runs of small tensors of one layer as one flat tensor: the same sums, element by element."""
    merge_module = importlib.import_module("hf_lwmm.merge")
    weights = _weights(tiny_models[1])
    weights = {key: value.to(torch.bfloat16) if "block.1." in key else value for key, value in weights.items()}  # runs end at a dtype
    save_file(weights, tiny_models[1] / "model.safetensors", metadata={"format": "pt"})
    merge_recipe = MergeRecipe(models=[str(m) for m in tiny_models], **recipe)
    plan = plan_merge(merge_recipe, QUIET)
    runs = [step for step in merge_module._steps(plan) if len(step) > 1]
    assert len(runs) > 10 and sum(map(len, runs)) > len(plan.tensors) // 2
    assert all(len({(t.layer, weights[t.names[1]].dtype) for t in run}) == 1 for run in runs)
    together = merge(merge_recipe, tmp_path / "runs", QUIET).sha256
    monkeypatch.setattr(merge_module, "RUN_BYTES", 1024)  # runs cut short
    assert merge(merge_recipe, tmp_path / "short-runs", QUIET).sha256 == together
    monkeypatch.setattr(merge_module, "RUN_BYTES", 0)  # every tensor on its own
    assert all(len(step) == 1 for step in merge_module._steps(plan))
    assert merge(merge_recipe, tmp_path / "alone", QUIET).sha256 == together


def test_a_method_with_its_own_merge_sees_every_tensor_whole(tiny_models, tmp_path):
    """Runs are only for the default weighted average: a method's own ``merge_tensor`` gets each tensor, shaped."""
    from hf_lwmm.merge import execute
    from hf_lwmm.methods.isotropic import IsotropicMerge

    seen: dict[str, tuple[int, ...]] = {}

    class Maximum(IsotropicMerge):
        def merge_tensor(self, key, tensors, weights):
            merged = torch.stack([tensor.float() for tensor in tensors]).amax(dim=0)
            seen[key] = tuple(merged.shape)
            return merged

    plan = plan_merge(MergeRecipe(models=[str(m) for m in tiny_models], method="isotropic"), QUIET)
    assert plan.method.averages and not Maximum(plan.method.parameters, num_models=3, anchor=0).averages
    plan = dataclasses.replace(plan, method=Maximum(plan.method.parameters, num_models=3, anchor=0))
    execute(plan, tmp_path / "max", QUIET)
    method_tensors = [tensor for tensor in plan.tensors if tensor.rule is Rule.METHOD]
    assert seen == {tensor.key: tensor.output.shape for tensor in method_tensors}
    merged, inputs = _weights(tmp_path / "max"), [_weights(m) for m in tiny_models]
    assert torch.equal(merged[MID], torch.maximum(torch.maximum(inputs[0][MID], inputs[1][MID]), inputs[2][MID]))
