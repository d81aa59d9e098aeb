"""Plan, then execute: the plan reads no weight bytes, refuses unrelated architectures, and methods get fresh tensors."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_lwmm import MergeRecipe, RunOptions, execute, merge, plan_merge
from hf_lwmm.errors import IncompatibleModelsError
from hf_lwmm.io import reader
from hf_lwmm.io.hashing import sha256_of
from hf_lwmm.io.reader import SafetensorsSource
from hf_lwmm.merge import write_weights
from hf_lwmm.methods import METHODS
from hf_lwmm.methods.isotropic import IsotropicMerge
from hf_lwmm.plan import Rule

from helpers import make_tiny_segformer

QUIET = RunOptions(progress=False)
MID = "segformer.encoder.block.3.0.mlp.dense1.weight"


def test_plan_reads_no_weight_bytes_then_execute_streams_it(tiny_models, tmp_path, monkeypatch):
    def no_reads(*args, **kwargs):
        raise AssertionError("weight bytes read while planning")

    with monkeypatch.context() as patch:
        patch.setattr(SafetensorsSource, "get", no_reads)
        patch.setattr(reader.mmap, "mmap", no_reads)
        plan = plan_merge(MergeRecipe(models=tiny_models, parameters={"alpha": 0.5, "start_layer": 4}, dtype="float16"))
    assert len(plan.layers) == 19 and plan.layers[4] == "block.1.0" and plan.method_parameters["start_layer"] == 4
    rules = {tensor.key: tensor for tensor in plan.tensors}
    assert rules["encoder.block.3.0.mlp.dense1.weight"].rule is Rule.METHOD
    assert rules["decode_head.batch_norm.running_var"].rule is Rule.GAUSSIAN_VARIANCE
    assert rules["decode_head.batch_norm.running_mean"].rule is Rule.AVERAGE
    assert rules["decode_head.batch_norm.num_batches_tracked"].rule is Rule.ANCHOR  # integer: the anchor's
    assert rules["encoder.block.3.0.mlp.dense1.weight"].output.dtype == torch.float16
    assert rules["encoder.patch_embeddings.0.proj.weight"].weights == (0.5, 0.25, 0.25)
    assert plan.merged_tensors == 123 and plan.anchor_tensors == 1
    assert [name for name, _ in plan.shards] == ["model.safetensors"]

    result = execute(plan, tmp_path / "out", QUIET)
    sources = [load_file(m / "model.safetensors")[MID] for m in tiny_models]
    weight = plan.layer_weights[plan.layers.index("block.3.0")].weights
    expected = sum(w * t for w, t in zip(weight, sources)).half()
    torch.testing.assert_close(load_file(tmp_path / "out" / "model.safetensors")[MID], expected)
    assert result.files == ["README.md", "config.json", "lwmm_recipe.yaml", "lwmm_weights.png", "model.safetensors",
                            "preprocessor_config.json"]


def test_plan_lays_out_shards(tiny_models):
    plan = plan_merge(MergeRecipe(models=tiny_models, max_shard_size="10KB"))
    assert len(plan.shards) > 3 and all(sum(info.nbytes for info in infos) <= 10_000 or len(infos) == 1 for _, infos in plan.shards)
    assert [info.name for _, infos in plan.shards for info in infos] == [tensor.output.name for tensor in plan.tensors]


def _fake_model(folder, model_type: str, prefix: str):
    """A tiny transformer-ish folder: config with a model type, safetensors whose names coincide after the prefix."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    generator = torch.Generator().manual_seed(len(model_type))
    save_file({f"{prefix}.encoder.layer.0.attention.self.query.weight": torch.randn(8, 8, generator=generator),
               f"{prefix}.encoder.layer.0.output.dense.weight": torch.randn(8, 8, generator=generator)},
              folder / "model.safetensors")
    return folder


def test_unrelated_architectures_are_refused_naming_both(tmp_path):
    bert, vit = _fake_model(tmp_path / "bert", "bert", "bert"), _fake_model(tmp_path / "vit", "vit", "vit")
    with pytest.raises(IncompatibleModelsError) as caught:
        plan_merge(MergeRecipe(models=[bert, vit], method="isotropic"))
    message = str(caught.value)
    assert f"{bert} (bert)" in message and f"{vit} (vit)" in message and "backbone family (glpn, segformer)" in message
    # the same pair with one type: the tensors align (proof that only the types stop the merge above)
    other = _fake_model(tmp_path / "bert2", "bert", "bert")
    assert len(plan_merge(MergeRecipe(models=[bert, other], method="isotropic")).alignment.shared) == 2


class MedianMerge(IsotropicMerge):
    """A median written the usual way: it keeps every copy it is given, then scribbles on them."""

    name = "median-test"
    seen: list[torch.Tensor] = []

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        copies = list(tensors)
        MedianMerge.seen = copies
        median = torch.stack(copies).median(dim=0).values
        for copy in copies:
            copy.fill_(float("nan"))  # its own copy: the model's file must not change
        return median


def test_custom_methods_receive_copies_of_their_own(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, MedianMerge.name, MedianMerge)
    before = [sha256_of(m / "model.safetensors") for m in tiny_models]
    sources = torch.stack([load_file(m / "model.safetensors")[MID] for m in tiny_models])
    merge(MergeRecipe(models=tiny_models, method=MedianMerge.name), tmp_path / "median", QUIET)
    torch.testing.assert_close(load_file(tmp_path / "median" / "model.safetensors")[MID], sources.median(dim=0).values,
                               rtol=0, atol=0)
    assert len({tensor.data_ptr() for tensor in MedianMerge.seen}) == 3  # three copies, not one buffer overwritten thrice
    assert [sha256_of(m / "model.safetensors") for m in tiny_models] == before


class FirstCopyMerge(IsotropicMerge):
    """Draws only the first model's copy and stops."""

    name = "first-copy-test"

    def merge_tensor(self, key: str, tensors: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        return next(iter(tensors)).float()


def test_a_method_may_stop_drawing_copies(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, FirstCopyMerge.name, FirstCopyMerge)
    merge(MergeRecipe(models=tiny_models, method=FirstCopyMerge.name, dtype="float16"), tmp_path / "first", QUIET)
    first = load_file(tiny_models[0] / "model.safetensors")[MID]
    assert torch.equal(load_file(tmp_path / "first" / "model.safetensors")[MID], first.half())


def test_each_step_is_prefetched_while_the_one_before_is_merged(tiny_models, tmp_path, monkeypatch):
    """The loop's steps (one tensor, or a run of small neighbours read flat) in order: P(1) G(0) P(2) G(1) … G(n-1)."""
    from hf_lwmm.merge import _reads_of, _steps

    plan = plan_merge(MergeRecipe(models=tiny_models, method="layerwise"), QUIET)
    assert {tensor.rule for tensor in plan.tensors} == set(Rule)  # every rule's reads are covered
    steps = _steps(plan)
    assert {len(step) > 1 for step in steps} == {True, False}
    calls: list[tuple[str, int, object]] = []
    for method in ("get", "get_flat", "prefetch"):
        original = getattr(SafetensorsSource, method)
        monkeypatch.setattr(SafetensorsSource, method, lambda self, arg, method=method, original=original:
                            calls.append((method, id(self), arg)) or original(self, arg))
    folder = tmp_path / "out"
    folder.mkdir()
    hashes = write_weights(plan, folder, device=torch.device("cpu"), progress=False)
    assert hashes == {"model.safetensors": sha256_of(folder / "model.safetensors")}
    reads = [[(id(source), names) for source, names in _reads_of(step, plan)] for step in steps]
    expected: list[tuple[str, int, object]] = []
    for index, step in enumerate(steps):
        expected += [("prefetch", source, names[0]) for source, names in (reads[index + 1] if index + 1 < len(reads) else [])]
        expected += [("get_flat", source, names) if len(step) > 1 else ("get", source, names[0]) for source, names in reads[index]]
    assert calls == expected


def test_fisher_merge_replays_from_its_recipe(tmp_path):
    from PIL import Image

    from hf_lwmm.cli import main

    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    (tmp_path / "images" / "images").mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 20, 90)).save(tmp_path / "images" / "images" / "0.png")
    first = merge(MergeRecipe(models=models, method="fisher", parameters={"fisher_data": str(tmp_path / "images"), "fisher_samples": 1}),
                  tmp_path / "one", QUIET)
    assert main(["merge", "--recipe", str(tmp_path / "one" / "lwmm_recipe.yaml"), "--output", str(tmp_path / "two")]) == 0
    assert load_file(tmp_path / "two" / "model.safetensors").keys() == load_file(tmp_path / "one" / "model.safetensors").keys()
    from hf_lwmm.hub import sha256_of

    assert {"model.safetensors": sha256_of(tmp_path / "two" / "model.safetensors")} == first.sha256
