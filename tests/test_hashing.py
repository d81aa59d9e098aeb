"""sha256 of weights files: hashed from a map in chunks, remembered only while a file provably has not changed."""

from __future__ import annotations

import hashlib
import mmap
import os
import time

import pytest
import yaml

from hf_lwmm import MergeRecipe, RunOptions, merge
from hf_lwmm.io import hashing
from hf_lwmm.io.hashing import remembered_sha256, sha256_of, weights_sha256


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files :func:`sha256_of` actually hashes, in order."""
    calls: list[str] = []
    original = hashing.sha256_of
    monkeypatch.setattr(hashing, "sha256_of", lambda path: calls.append(os.path.basename(path)) or original(path))
    return calls


@pytest.mark.parametrize("size", [0, 1, mmap.PAGESIZE, mmap.PAGESIZE + 1, 3 * mmap.PAGESIZE - 5])
def test_sha256_of_equals_hashlib_across_chunks(tmp_path, monkeypatch, size):
    monkeypatch.setattr(hashing, "CHUNK", mmap.PAGESIZE)  # a chunk is released page by page: a whole number of pages
    data = bytes(i % 251 for i in range(size))
    (tmp_path / "file").write_bytes(data)
    assert sha256_of(tmp_path / "file") == hashlib.sha256(data).hexdigest()


def test_a_remembered_hash_holds_only_while_the_file_is_unchanged(tmp_path, monkeypatch, hashed):
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)
    cache, file = tmp_path / "cache", tmp_path / "model.safetensors"
    file.write_bytes(b"a" * 100)
    time.sleep(0.05)
    assert remembered_sha256(file, cache=cache) == hashlib.sha256(b"a" * 100).hexdigest()
    assert remembered_sha256(file, cache=cache) == hashlib.sha256(b"a" * 100).hexdigest()
    assert hashed == ["model.safetensors"] and len(list(cache.glob("*.json"))) == 1  # hashed once, then remembered

    times = os.stat(file)
    file.write_bytes(b"b" * 100)  # same size, other bytes, and the modification time put back
    os.utime(file, ns=(times.st_atime_ns, times.st_mtime_ns))
    time.sleep(0.05)
    assert remembered_sha256(file, cache=cache) == hashlib.sha256(b"b" * 100).hexdigest()  # the change time tells
    assert hashed == ["model.safetensors"] * 2


def test_a_file_changed_just_before_its_hash_is_not_remembered(tmp_path, hashed):
    cache, file = tmp_path / "cache", tmp_path / "model.safetensors"
    file.write_bytes(b"fresh")  # changed well within RACY_SECONDS of the hash
    assert remembered_sha256(file, cache=cache) == remembered_sha256(file, cache=cache) == hashlib.sha256(b"fresh").hexdigest()
    assert hashed == ["model.safetensors"] * 2 and not cache.exists()


def test_a_cache_that_cannot_be_written_costs_only_the_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)
    (tmp_path / "cache").write_text("a file where the folder should be")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    time.sleep(0.05)
    assert weights_sha256(tmp_path, cache=tmp_path / "cache") == {"w.safetensors": hashlib.sha256(b"x").hexdigest()}


def test_a_merge_records_the_same_source_hashes_remembered_or_not(tiny_models, tmp_path, monkeypatch, hashed):
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)
    monkeypatch.setenv(hashing.CACHE_VARIABLE, str(tmp_path / "cache"))
    time.sleep(0.05)
    recorded = []
    for run in ("first", "second"):
        merge(MergeRecipe(models=tiny_models, method="isotropic"), tmp_path / run, RunOptions(progress=False))
        document = yaml.safe_load((tmp_path / run / "lwmm_recipe.yaml").read_text())
        recorded.append([source["weights_sha256"] for source in document["sources"]])
    assert recorded[0] == recorded[1] == [{"model.safetensors": sha256_of(m / "model.safetensors")} for m in tiny_models]
    assert hashed == ["model.safetensors"] * 3  # the first merge hashed the three sources, the second none
