"""Bad input: one clear line naming the input at fault, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
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


# ------------------------------------------------------------------ every CLI case: one line, exit 2, nothing new


@dataclass(frozen=True)
class Case:
    """A command line (``{name}`` placeholders: see :func:`inputs`), the fragment its one-line error names, and why it may be skipped."""

    args: str
    error: str
    skip_if: str | None = None


#: one line per case; outputs go to ``{ws}`` (the working directory), inputs are shared and never change
CLI_CASES = {
    "shard size with an unknown unit": Case("merge {m0} {m1} -o {ws}/out --max-shard-size 5XB", "--max-shard-size '5XB': not a size"),
    "shard size 0": Case("merge {m0} {m1} -o {ws}/out --max-shard-size 0", "--max-shard-size '0': must be at least one byte"),
    "cuda without a GPU": Case("merge {m0} {m1} -o {ws}/out --device cuda", "--device 'cuda': no cuda device", skip_if="cuda"),
    "--alpha with isotropic": Case("merge {m0} {m1} -o {ws}/out --method isotropic --alpha 0.3",
                                   "--alpha: not a parameter of --method isotropic"),
    "--fisher-data with layerwise": Case("merge {m0} {m1} -o {ws}/out --fisher-data {data}",
                                         "--fisher-data: not a parameter of --method layerwise"),
    "recipe alpha is text": Case("merge --recipe {recipe_alpha_text} -o {ws}/out",
                                 "recipe field 'alpha': Input should be a valid number (got 'high')"),
    "recipe start_layer is a list": Case("merge --recipe {recipe_start_layer_list} -o {ws}/out",
                                         "recipe field 'start_layer': Input should be a valid integer (got [1, 2])"),
    "recipe model is a number": Case("merge --recipe {recipe_model_number} -o {ws}/out",
                                     "recipe field 'models[0]': Input should be a valid string (got 42)"),
    "recipe shard size is a number": Case("merge --recipe {recipe_shard_size_number} -o {ws}/out",
                                          "recipe field 'max_shard_size': Input should be a valid string (got 12)"),
    "recipe not UTF-8": Case("merge --recipe {recipe_not_utf8} -o {ws}/out", "recipe_not_utf8.yaml: not UTF-8 text"),
    "unwritable output parent": Case("merge {m0} {m1} -o {unwritable}/merged", "cannot write in"),
    "output is the root": Case("merge {m0} {m1} -o / --overwrite", "--output /: the root folder"),
    "output is an input": Case("merge {m0} {m1} -o {m1} --overwrite", "is the input"),
    "output is an input, relative": Case("merge {m0} {m1} -o {m1_relative} --overwrite", "is the input"),
    "output is an input, via a link": Case("merge {m0} {m1} -o {m1_link} --overwrite", "is the input"),
    "output inside an input": Case("merge {m0} {m1} -o {m1}/merged", "lies inside the input"),
    "output contains an input": Case("merge {m0} {m1} -o {inputs} --overwrite", "contains the input"),
    "output is an input's parent, relative": Case("merge {m0} {m1} -o {m1_relative}/.. --overwrite", "contains the input"),
    "output is a file": Case("merge {m0} {m1} -o {file} --overwrite", "exists and is not a folder"),
    "config.json is an array": Case("merge {m0} {config_array} -o {ws}/out", "config.json is a JSON list"),
    "overlapping tensors": Case("merge {m0} {overlapping} -o {ws}/out", "overlaps the tensor before it"),
    "trailing bytes": Case("merge {m0} {trailing} -o {ws}/out", "trailing bytes after the tensor data"),
    "shard index leaving the folder": Case("merge {m0} {escaping_index} -o {ws}/out", "not a file name inside the model folder"),
    "bad Hub repo before the merge": Case("merge {m0} {m1} -o {ws}/out --push-to-hub a/b/c", "repo 'a/b/c': expected a Hub repo id"),
    "eval of a truncated file": Case("eval {truncated} --dataset {data}", "is truncated"),
    "eval of overlapping tensors": Case("eval {overlapping} --dataset {data}", "overlaps the tensor before it"),
    "eval of a pickle": Case("eval {pickle} --dataset {data}", "--allow-pickle"),
    "eval of a corrupt PNG": Case("eval {m0} --dataset {corrupt_png}", "frame_001.png: not a readable image"),
    "eval of a corrupt PNG, in a worker": Case("eval {m0} --dataset {corrupt_png} --num-workers 1", "frame_001.png: not a readable image"),
    "eval --max-samples -3": Case("eval {m0} --dataset {data} --max-samples -3", "max_samples -3: must be at least 1"),
    # output paths are checked before the evaluation: the corrupt PNG would fail it
    "eval --output-json onto a folder": Case("eval {m0} --dataset {corrupt_png} --output-json {inputs}", "--output-json"),
    "eval --output-json under a file": Case("eval {m0} --dataset {corrupt_png} --output-json {file}/r.json", "is not a folder"),
    "sweep --output-dir is a file": Case("sweep {m0} {m1} --dataset {corrupt_png} --output-dir {file}", "--output-dir"),
    "compare --output-dir is a file": Case("compare {m0} {m1} --dataset {corrupt_png} --output-dir {file}", "--output-dir"),
    "diff --plot x.txt": Case("diff {m0} {truncated} --plot {ws}/x.txt", "--plot"),
    "demo --output is a file": Case("demo --output {file}", "exists and is not a folder"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """The inputs every case may name, built once: good and broken models, datasets, a file."""
    root = tmp_path_factory.mktemp("inputs")
    m0, m1 = (make_tiny_segformer(root / f"m{i}", seed=i) for i in range(2))
    broken = {name: root / name for name in ("truncated", "overlapping", "trailing", "config_array", "pickle", "escaping_index")}
    for folder in broken.values():
        shutil.copytree(m1, folder)
    weights = broken["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _rewrite_header(broken["overlapping"] / "model.safetensors", _overlap_two)
    with open(broken["trailing"] / "model.safetensors", "ab") as handle:
        handle.write(b"junk")
    (broken["config_array"] / "config.json").write_text("[1, 2]")
    torch.save(load_file(broken["pickle"] / "model.safetensors"), broken["pickle"] / "pytorch_model.bin")
    (broken["pickle"] / "model.safetensors").unlink()
    (broken["escaping_index"] / "model.safetensors").unlink()
    names = load_file(m0 / "model.safetensors")
    index = {"metadata": {}, "weight_map": {name: "../m0/model.safetensors" for name in names}}
    (broken["escaping_index"] / "model.safetensors.index.json").write_text(json.dumps(index))
    data = _paired_data(root / "data")
    corrupt = shutil.copytree(data, root / "corrupt_png")
    (corrupt / "images" / "frame_001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "m1-link").symlink_to(m1)
    recipes = _recipe_files(root / "recipes", [str(m0), str(m1)])
    (root / "notes.txt").write_text("not a folder")
    unwritable = root / "read-only"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    return {"inputs": str(root), "m0": str(m0), "m1": str(m1), "m1_link": str(root / "m1-link"), "file": str(root / "notes.txt"),
            "data": str(data), "corrupt_png": str(corrupt), **{name: str(path) for name, path in broken.items()},
            **{name: str(path) for name, path in recipes.items()},
            "unwritable": "/sys" if os.geteuid() == 0 else str(unwritable)}  # root writes anywhere but in /sys


def _recipe_files(folder: Path, models: list[str]) -> dict[str, Path]:
    """Recipe files, each with one field of the wrong type (the typed recipe's own tests cover each field)."""
    folder.mkdir()
    documents = {
        "recipe_alpha_text": {"models": models, "parameters": {"alpha": "high"}},
        "recipe_start_layer_list": {"models": models, "parameters": {"start_layer": [1, 2]}},
        "recipe_model_number": {"models": [42, models[1]]},
        "recipe_shard_size_number": {"models": models, "max_shard_size": 12},
    }
    paths = {name: folder / f"{name}.yaml" for name in [*documents, "recipe_not_utf8"]}
    for name, document in documents.items():
        paths[name].write_text(json.dumps(document))  # JSON is YAML
    paths["recipe_not_utf8"].write_bytes(json.dumps({"models": models}).encode() + b"\n# caf\xe9\n")
    return paths


def _paired_data(folder: Path, count: int = 3) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "images" / f"frame_{index:03d}.png")
        Image.fromarray(rng.integers(0, 5, (16, 16), dtype=np.uint8)).save(folder / "labels" / f"frame_{index:03d}.png")
    return folder


def _rewrite_header(path: Path, change) -> None:
    """Replace a safetensors file's header by ``change(header)``, keeping the data bytes."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8 : 8 + length]))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _overlap_two(header: dict) -> dict:
    """A tensor made to read the bytes of an earlier one of the same size (the safetensors library refuses this)."""
    entries = sorted((meta["data_offsets"], name) for name, meta in header.items() if name != "__metadata__")
    by_size: dict[int, list] = {}
    for offsets, name in entries:
        by_size.setdefault(offsets[1] - offsets[0], []).append(offsets)
        if len(by_size[offsets[1] - offsets[0]]) == 2:
            header[name]["data_offsets"] = list(by_size[offsets[1] - offsets[0]][0])
            return header
    raise AssertionError("no two tensors of the same size")


def _tree(*folders: Path) -> dict[str, tuple[int, int] | None]:
    """Every entry under the folders: files → (size, mtime), folders → None (so new empty ones show)."""
    return {str(path): None if path.is_dir() and not path.is_symlink() else (path.lstat().st_size, path.lstat().st_mtime_ns)
            for folder in folders for path in [folder, *folder.rglob("*")]}


#: a tqdm progress bar (the one kind of stderr line allowed besides the error; drop this once bars show only on a terminal)
_PROGRESS_BAR = re.compile(r"^[^:]*: +\d+%\|")


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_every_bad_input_is_one_line_exit_2_and_nothing_new(case: Case, inputs, tmp_path, monkeypatch, capfd):
    if case.skip_if == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    monkeypatch.chdir(workspace)
    names = {**inputs, "ws": str(workspace), "m1_relative": os.path.relpath(inputs["m1"], workspace)}
    argv = shlex.split(case.args.format(**names))
    before = _tree(workspace, Path(inputs["inputs"]))
    capfd.readouterr()
    assert main(argv) == 2
    err = [line for line in capfd.readouterr().err.replace("\r", "\n").splitlines() if line and not _PROGRESS_BAR.match(line)]
    assert len(err) == 1 and err[0].startswith(f"lwmm-hub {argv[0]}: error: "), err
    assert case.error in err[0], err[0]
    assert _tree(workspace, Path(inputs["inputs"])) == before


# ------------------------------------------------------------------ safetensors validated as strictly as the library


def _header_change(change):
    return lambda path: _rewrite_header(path, change)


def _set(name: str, key: str, value):
    def change(header: dict) -> dict:
        header[name][key] = value
        return header
    return change


def _append(data: bytes):
    def corrupt(path: Path) -> None:
        with open(path, "ab") as handle:
            handle.write(data)
    return corrupt


def _tensor_file(path: Path) -> Path:
    save_file({"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 2, dtype=torch.float16), "empty": torch.zeros(0)},
              path, metadata={"format": "pt"})
    return path


def _gap(header: dict) -> dict:
    header["b"]["data_offsets"] = [header["b"]["data_offsets"][0] + 2, header["b"]["data_offsets"][1] + 2]
    return header


STRICT_CASES = {
    "overlap": (_header_change(_set("b", "data_offsets", [0, 8])), "overlaps the tensor before it"),
    "gap": (_header_change(_gap), "ends past the end|leaves a gap"),
    "trailing bytes": (_append(b"\0" * 8), "8 trailing bytes"),
    "size differs from the shape": (_header_change(_set("b", "shape", [2, 3])), "has 8 bytes of data for its F16"),
    "unknown dtype": (_header_change(_set("a", "dtype", "F128")), "corrupt header entry"),
    "float offsets": (_header_change(_set("a", "data_offsets", [0.0, 16.0])), "corrupt header entry"),
    "negative dimension": (_header_change(_set("a", "shape", [-4])), "corrupt header entry"),
    "metadata not strings": (_header_change(lambda h: {**h, "__metadata__": {"format": 1}}), "'__metadata__' must map"),
}


@pytest.mark.parametrize("corrupt,message", STRICT_CASES.values(), ids=STRICT_CASES.keys())
def test_safetensors_checked_as_strictly_as_the_library(tmp_path, corrupt, message):
    from safetensors import safe_open

    from hf_lwmm.errors import CorruptWeightsError
    from hf_lwmm.io import open_weights

    path = _tensor_file(tmp_path / "model.safetensors")
    assert open_weights(tmp_path, label="good").infos.keys() == {"a", "b", "empty"}
    corrupt(path)
    with pytest.raises(Exception):  # the library refuses the file...
        with safe_open(str(path), "pt") as handle:
            [handle.get_tensor(name) for name in handle.keys()]
    with pytest.raises(CorruptWeightsError, match=message):  # ...and so does the reader, in one line naming the file
        open_weights(tmp_path, label="m")


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "/abs/model.safetensors", "link/model.safetensors"])
def test_shard_index_stays_inside_the_model_folder(tmp_path, shard):
    from hf_lwmm.errors import CorruptWeightsError
    from hf_lwmm.io import open_weights

    model, outside = tmp_path / "model", tmp_path / "outside"
    model.mkdir()
    outside.mkdir()
    _tensor_file(outside / "model.safetensors")
    (model / "link").symlink_to(outside)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard, "b": shard, "empty": shard}}))
    with pytest.raises(CorruptWeightsError, match="inside the model folder|leading out of the model folder"):
        open_weights(model, label="m")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(["a", "b", "empty"], "shard.safetensors")}))
    _tensor_file(model / "shard.safetensors")
    assert open_weights(model, label="m").infos.keys() == {"a", "b", "empty"}


def test_shards_of_a_hub_cache_snapshot_may_link_into_its_blobs(tmp_path):
    """huggingface_hub stores a snapshot's files as links to ``../../blobs/…``: inside the cached repo, so allowed."""
    from hf_lwmm.io import open_weights

    repo = tmp_path / "hub" / "models--org--name"
    snapshot, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    _tensor_file(blobs / "f00d")
    (snapshot / "shard.safetensors").symlink_to(Path("../../blobs/f00d"))
    (blobs / "cafe").write_text(json.dumps({"weight_map": dict.fromkeys(["a", "b", "empty"], "shard.safetensors")}))
    (snapshot / "model.safetensors.index.json").symlink_to(Path("../../blobs/cafe"))
    assert open_weights(snapshot, label="org/name").infos.keys() == {"a", "b", "empty"}
