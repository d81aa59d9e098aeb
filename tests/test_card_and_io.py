"""The card and recipe record the merge; sharded streaming output; recipes re-run merges."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation

from hf_lwmm.recipe import RunOptions
from hf_lwmm import MergeRecipe, merge
from hf_lwmm.cli import main
from hf_lwmm.errors import CorruptWeightsError
from hf_lwmm.io import ShardedSafetensorsWriter, TensorInfo, open_weights, parse_size, sha256_of

QUIET = RunOptions(progress=False)


def test_card_metadata_parses_and_lists_every_source(tiny_models, tmp_path):
    result = merge(MergeRecipe(models=[str(m) for m in tiny_models], anchor=str(tiny_models[1])), tmp_path / "out", QUIET)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-segmentation"
    assert {"merge", "lwmm", "segformer"} <= set(data["tags"])
    assert [s["ref"] for s in data["lwmm_sources"]] == ["model_0", "model_1", "model_2"]  # local folders by name, no path
    assert [s["weights_sha256"] for s in data["lwmm_sources"]] == [
        {"model.safetensors": hashlib.sha256((m / "model.safetensors").read_bytes()).hexdigest()} for m in tiny_models]
    assert [s["role"] for s in data["lwmm_sources"]] == ["source", "anchor", "source"]
    assert str(tmp_path) not in (tmp_path / "out" / "README.md").read_text()
    assert "base_model" not in data  # local folders are not Hub repos
    digest = hashlib.sha256((tmp_path / "out" / "model.safetensors").read_bytes()).hexdigest()
    assert result.sha256 == {"model.safetensors": digest} and digest in card.text
    assert "arXiv:2409.15813" in card.text and "Multi-target Domain Adaptation" in card.text
    assert "| 0 | `patch_embeddings.0` | 0.3333 | 0.3333 | 0.3333 |" in card.text
    assert "lwmm-hub merge --recipe lwmm_recipe.yaml --output out" in card.text
    layers = [entry.layer for entry in result.plan.layer_weights]  # the default start: the decode head's fusion layer
    assert f"| `start_layer` | `{layers.index('linear_fuse')}` |" in card.text and "| `start_layer_name` | `linear_fuse` |" in card.text
    assert "| `alpha` | `0.3333333333333333` |" in card.text
    assert (tmp_path / "out" / "lwmm_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_file_reruns_the_merge_and_flags_override(tiny_models, tmp_path, capsys):
    first = merge(MergeRecipe(models=[str(m) for m in tiny_models], parameters={"alpha": 0.6, "start_layer": "block.2.0"}), tmp_path / "one", QUIET)
    document = yaml.safe_load((tmp_path / "one" / "lwmm_recipe.yaml").read_text())
    assert document["recipe"]["parameters"]["alpha"] == 0.6 and document["weights_sha256"] == first.sha256
    assert [s["ref"] for s in document["sources"]] == [str(m) for m in tiny_models]
    assert main(["merge", "--recipe", str(tmp_path / "one" / "lwmm_recipe.yaml"), "--output", str(tmp_path / "two")]) == 0
    again = yaml.safe_load((tmp_path / "two" / "lwmm_recipe.yaml").read_text())
    assert again["weights_sha256"] == first.sha256
    assert main(["merge", "--recipe", str(tmp_path / "one" / "lwmm_recipe.yaml"), "--alpha", "0.9", "--output", str(tmp_path / "three")]) == 0
    changed = yaml.safe_load((tmp_path / "three" / "lwmm_recipe.yaml").read_text())
    assert changed["recipe"]["parameters"]["alpha"] == 0.9 and changed["weights_sha256"] != first.sha256


def test_sharded_output_loads_and_matches_single_file(tiny_models, tmp_path):
    recipe = MergeRecipe(models=[str(m) for m in tiny_models])
    merge(recipe, tmp_path / "single", QUIET)
    recipe = recipe.replace(max_shard_size="10KB")
    result = merge(recipe, tmp_path / "sharded", QUIET)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards == sorted(result.sha256) and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    single = load_file(tmp_path / "single" / "model.safetensors")
    sharded = {k: v for shard in shards for k, v in load_file(tmp_path / "sharded" / shard).items()}
    assert single.keys() == sharded.keys() and all(torch.equal(single[k], sharded[k]) for k in single)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "sharded")
    torch.testing.assert_close(model.decode_head.classifier.weight.detach(), single["decode_head.classifier.weight"])
    # a sharded model is also a valid input
    assert open_weights(tmp_path / "sharded", label="sharded").infos.keys() == single.keys()


@pytest.fixture(params=["mapped", "read"])
def tensor_access(request, monkeypatch):
    """Run a test with every tensor mapped from its file, then with every tensor read."""
    from hf_lwmm.io import reader

    monkeypatch.setattr(reader, "MAP_FROM_BYTES", 1 if request.param == "mapped" else 1 << 40)
    return request.param


def test_writer_streams_exact_bytes(tmp_path, tensor_access):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
               "c": torch.ones(3, dtype=torch.bfloat16), "empty": torch.zeros(0, 4)}
    plan = [TensorInfo(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with ShardedSafetensorsWriter(tmp_path, plan) as writer:
        for name, tensor in tensors.items():
            writer.write([name], tensor)
    loaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    before = sha256_of(tmp_path / "model.safetensors")
    assert writer.sha256 == {"model.safetensors": before}
    source = open_weights(tmp_path, label="x")
    mine = source.get("a")
    mine += 1  # a copy-on-write map or a read: the caller's own, the file unchanged
    assert torch.equal(source.get("a"), tensors["a"]) and sha256_of(tmp_path / "model.safetensors") == before
    assert source.get("a").data_ptr() != source.get("a").data_ptr()  # a fresh copy per get
    assert source.get("empty").shape == (0, 4) and torch.equal(source.get("b"), tensors["b"])
    assert parse_size("5GB") == 5 * 10**9 and parse_size("10KiB") == 10240
    with open(tmp_path / "model.safetensors", "r+b") as handle:  # the file shrinks after its header was read
        handle.truncate(handle.seek(0, 2) - 4)
    with pytest.raises(CorruptWeightsError, match="model x: model.safetensors is truncated at tensor 'c'"):
        source.get("c")


def test_neighbours_read_flat_are_their_elements_back_to_back(tmp_path, tensor_access, monkeypatch):
    """``get_flat``: one map or read for tensors back to back in a shard; otherwise each tensor, concatenated."""
    from hf_lwmm.io import reader

    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7.5]), "c": torch.ones(2, 2),
               "half": torch.tensor([1.5, 2.5], dtype=torch.float16), "d": torch.tensor([-1.0, -2.0])}
    with ShardedSafetensorsWriter(tmp_path, [TensorInfo(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]) as writer:
        for name, tensor in tensors.items():
            writer.write([name], tensor)
    source = open_weights(tmp_path, label="x")
    spans = []
    monkeypatch.setattr(source, "_bytes", lambda entries: spans.append([e.info.name for e in entries]) or type(source)._bytes(source, entries))
    flat = source.get_flat(["a", "b", "c"])
    assert torch.equal(flat, torch.tensor([0.0, 1, 2, 3, 4, 5, 7.5, 1, 1, 1, 1])) and spans == [["a", "b", "c"]]
    flat += 1  # the caller's own
    assert torch.equal(source.get_flat(["a", "b"]), torch.tensor([0.0, 1, 2, 3, 4, 5, 7.5]))
    spans.clear()
    assert torch.equal(source.get_flat(["a", "c"]), torch.tensor([0.0, 1, 2, 3, 4, 5, 1, 1, 1, 1])) and spans == [["a"], ["c"]]
    mixed = source.get_flat(["half", "d"])  # two dtypes: each read, then promoted
    assert mixed.dtype == torch.float32 and mixed.tolist() == [1.5, 2.5, -1.0, -2.0]
    in_memory = reader.StateDictSource("y", tensors)
    assert torch.equal(in_memory.get_flat(["b", "d"]), torch.tensor([7.5, -1.0, -2.0]))
    with open(tmp_path / "model.safetensors", "r+b") as handle:  # the file shrinks into 'c': the error names it
        handle.truncate(handle.seek(0, 2) - 14)
    with pytest.raises(CorruptWeightsError, match="model x: model.safetensors is truncated at tensor 'c'"):
        source.get_flat(["a", "b", "c"])


def test_a_tensor_not_aligned_in_its_file_reads_right(tmp_path, tensor_access):
    """safetensors' own writer aligns every tensor; a file that does not (a one-byte tensor first) still reads."""
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.float32)
    header = {"flag": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "values": {"dtype": "F32", "shape": [3], "data_offsets": [1, 13]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\x07" + values.numpy().tobytes())
    source = open_weights(tmp_path, label="odd")
    assert torch.equal(source.get("values"), values) and source.get("flag").tolist() == [7]


def test_a_run_of_tensors_written_at_once_makes_the_files_of_writes_one_by_one(tmp_path):
    """A run is one write, split where a shard ends; the writer refuses tensors off the plan."""
    tensors = {f"t{i}": torch.arange(i * 3, dtype=torch.float32) - i for i in range(6)}  # 0, 12, …, 60 bytes
    plan = [TensorInfo(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    for folder in ("one", "run", "refused"):
        (tmp_path / folder).mkdir()
    with ShardedSafetensorsWriter(tmp_path / "one", plan, max_shard_size=60) as one:
        for name, tensor in tensors.items():
            one.write([name], tensor)
    with ShardedSafetensorsWriter(tmp_path / "run", plan, max_shard_size=60) as run:
        run.write(["t0", "t1", "t2", "t3"], torch.cat([tensors[f"t{i}"] for i in range(4)]))  # shards t0–t2 | t3
        run.write(["t4", "t5"], torch.cat([tensors["t4"], tensors["t5"]]))  # t4 | t5
    assert len(one.sha256) == 4 and run.sha256 == one.sha256
    assert all(sha256_of(tmp_path / "run" / name) == digest for name, digest in run.sha256.items())
    with pytest.raises(RuntimeError, match="closed before every planned tensor was written"):
        with ShardedSafetensorsWriter(tmp_path / "refused", plan, max_shard_size=60) as refusing:
            with pytest.raises(RuntimeError, match=r"are torch.float32\(1, 3\), planned torch.float32\(0,\), torch.float32\(3,\)"):
                refusing.write(["t0", "t1"], tensors["t1"].reshape(1, 3))
            with pytest.raises(RuntimeError, match=r"'t3' written out of the planned order \(expected 't2'\)"):
                refusing.write(["t3"], tensors["t3"])
            with pytest.raises(RuntimeError, match=r"are torch.float64\(9,\), planned torch.float32\(9,\)"):
                refusing.write(["t3"], tensors["t3"].double())


@pytest.mark.parametrize(("step", "chunk", "piece"), [(1, 3, 5), (8, 5, 1 << 18), (1 << 24, 1 << 20, 7)])
def test_the_writer_hashes_what_is_in_the_file_however_it_hands_it_over(tmp_path, monkeypatch, step, chunk, piece):
    from hf_lwmm.io import writer as writer_module

    monkeypatch.setattr(writer_module, "_HASH_STEP", step)  # bytes handed to the hash thread at once
    monkeypatch.setattr(writer_module, "_HASH_CHUNK", chunk)  # bytes it reads back at once
    monkeypatch.setattr(writer_module, "_WRITE_CHUNK", piece)  # bytes written per system call
    tensors = {f"t{i}": torch.arange(i * 7, dtype=torch.float32) for i in range(6)}
    plan = [TensorInfo(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with ShardedSafetensorsWriter(tmp_path, plan, max_shard_size=60) as writer:
        for name, tensor in tensors.items():
            writer.write([name], tensor)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 1 and writer.sha256 == {file.name: sha256_of(file) for file in files}
    loaded = {name: tensor for file in files for name, tensor in load_file(file).items()}
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())
