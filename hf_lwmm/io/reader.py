"""Lazy tensor access to a model's weights, one tensor at a time.

A large safetensors tensor is a copy-on-write memory map of its own bytes (``mmap`` with ``MAP_PRIVATE`` over
the tensor's pages, not the whole file): nothing is copied on the way to the merge's kernels, writing to the
tensor never reaches the file, and the pages leave the process's resident set when the tensor is freed
(a map of the whole file would keep every page it ever touched, so peak RSS would grow with the number of
models). A small one is read into memory of its own: one read and a copy cost less than mapping and
unmapping (:data:`MAP_FROM_BYTES`); tensors lying back to back are one map or read for
:meth:`TensorSource.get_flat`. :meth:`TensorSource.prefetch` asks the kernel to read ahead from a tensor (a window
of :data:`PREFETCH_BYTES`), while the merge computes the one before it.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

import torch

from hf_lwmm.errors import CorruptWeightsError, LwmmError
from hf_lwmm.io.pickles import load_pickle_weights

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
PICKLE_NAMES = (PICKLE_NAME, PICKLE_INDEX_NAME)

#: safetensors dtype names and their torch dtypes
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
#: tensors of at least this many bytes are mapped, smaller ones read: a map costs two system calls and a page fault
#: per 64 KiB, a read one call and a copy (8×B5 merge, 1,172 tensors per model, 842 of them under 64 KiB: reading
#: those under 1 MiB makes the loop 0.17 s faster than mapping all; reading all, 0.05 s slower)
MAP_FROM_BYTES = 1 << 20
#: bytes of a shard :meth:`SafetensorsSource.prefetch` asks the kernel for at once, from the tensor asked for: a
#: merge's next run of neighbours, and one system call per window, not per tensor (a call per tensor of an 8×B5
#: merge from the page cache, 9,376 calls, had cost 0.05–0.18 s of a 1.4–1.7 s loop)
PREFETCH_BYTES = 1 << 24


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of a stored tensor, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    file: Path
    start: int
    stop: int


class TensorSource:
    """The tensors of one model, by their names in the files."""

    def __init__(self, label: str, infos: dict[str, TensorInfo]) -> None:
        self.label = label
        self.infos = infos

    @property
    def names(self) -> list[str]:
        return list(self.infos)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, in memory of its own: the caller may keep it or modify it without changing the source."""
        raise NotImplementedError

    def get_flat(self, names: Sequence[str]) -> torch.Tensor:
        """The named tensors' elements back to back in one 1-D tensor (of their promoted dtype), in memory of its own."""
        return torch.cat([self.get(name).reshape(-1) for name in names])

    def prefetch(self, name: str) -> None:
        """Start bringing the tensor's bytes into memory without waiting (a hint; the default does nothing)."""


class SafetensorsSource(TensorSource):
    """One or several safetensors shards; each tensor is mapped copy-on-write, or read if small, when it is asked for."""

    def __init__(self, label: str, files: list[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        for file in files:
            for entry in _read_header(label, file):
                if entry.info.name in self._entries:
                    raise CorruptWeightsError(f"model {label}: tensor {entry.info.name!r} is stored twice "
                                              f"({self._entries[entry.info.name].file.name}, {file.name})")
                self._entries[entry.info.name] = entry
        self._handles: dict[Path, BinaryIO] = {}  # one open file per shard, closed with the source
        self._advised: dict[Path, tuple[int, int]] = {}  # per shard, the bytes last asked for by prefetch
        self._opening = threading.Lock()
        super().__init__(label, {name: entry.info for name, entry in self._entries.items()})

    def get(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        if entry.stop == entry.start:
            return torch.empty(entry.info.shape, dtype=entry.info.dtype)
        data = self._bytes([entry])
        return data if len(entry.info.shape) == 1 else data.reshape(entry.info.shape)  # most tensors: 1-D, shaped already

    def get_flat(self, names: Sequence[str]) -> torch.Tensor:
        """One map or read when the tensors lie back to back in one shard with one dtype (as a merge's neighbours do)."""
        entries = [self._entries[name] for name in names]
        first = entries[0]
        if any(b.file != first.file or b.start != a.stop or b.info.dtype != first.info.dtype for a, b in zip(entries, entries[1:])):
            return super().get_flat(names)
        return self._bytes(entries)

    def _bytes(self, entries: list[_Entry]) -> torch.Tensor:
        """The data of tensors lying back to back in one shard, as a 1-D tensor of their dtype: mapped copy-on-write,
        or read if small."""
        start, stop, dtype = entries[0].start, entries[-1].stop, entries[0].info.dtype
        data = self._map(entries, start, stop) if stop - start >= MAP_FROM_BYTES else self._read(entries, start, stop)
        return data.view(dtype)

    def _map(self, entries: list[_Entry], start: int, stop: int) -> torch.Tensor:
        first_page = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            window = mmap.mmap(self._fileno(entries[0].file), stop - first_page, access=mmap.ACCESS_COPY, offset=first_page)
        except ValueError:  # the file shrank since its header was read
            raise self._truncated(entries) from None
        data = torch.frombuffer(window, dtype=torch.uint8, count=stop - start, offset=start - first_page)
        if (start - first_page) % entries[0].info.dtype.itemsize:
            data = data.clone()  # a tensor not aligned to its element size in the file (no writer today does that)
        return data

    def _read(self, entries: list[_Entry], start: int, stop: int) -> torch.Tensor:
        data = torch.empty(stop - start, dtype=torch.uint8)
        if read_at(self._fileno(entries[0].file), data.numpy().data, start) != stop - start:  # the file shrank since its header was read
            raise self._truncated(entries)
        return data

    def _truncated(self, entries: list[_Entry]) -> CorruptWeightsError:
        """The error for a shard that is now shorter than its header says: it names the first tensor past the end."""
        file = entries[0].file
        size = os.stat(file).st_size
        entry = next((entry for entry in entries if entry.stop > size), entries[0])
        return CorruptWeightsError(f"model {self.label}: {file.name} is truncated at tensor {entry.info.name!r}")

    def prefetch(self, name: str) -> None:
        """Ask for the window of :data:`PREFETCH_BYTES` from this tensor on, unless the last window holds it."""
        entry = self._entries[name]
        start, stop = self._advised.get(entry.file, (0, 0))
        if (start <= entry.start and entry.stop <= stop) or not hasattr(os, "posix_fadvise"):  # none on macOS, Windows
            return
        stop = max(entry.stop, entry.start + PREFETCH_BYTES)
        os.posix_fadvise(self._fileno(entry.file), entry.start, stop - entry.start, os.POSIX_FADV_WILLNEED)
        self._advised[entry.file] = (entry.start, stop)

    def _fileno(self, file: Path) -> int:
        with self._opening:  # threads may ask for the same shard at once: open it once
            handle = self._handles.get(file)
            if handle is None:
                handle = self._handles[file] = open(file, "rb", buffering=0)
        return handle.fileno()


def read_at(fileno: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` with the file's bytes from ``offset``; the count read, less than asked only at the end of the file."""
    done = os.preadv(fileno, [view], offset)
    while 0 < done < len(view):  # a read may return less than asked
        read = os.preadv(fileno, [view[done:]], offset + done)
        if read == 0:
            break
        done += read
    return done


class StateDictSource(TensorSource):
    """Tensors already in memory (pickle checkpoints loaded with ``weights_only=True``)."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors
        super().__init__(label, {n: TensorInfo(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()})

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name].clone()


def open_weights(folder: Path, *, label: str, allow_pickle: bool = False) -> TensorSource:
    """Open the weights of a model folder: ``model.safetensors``, a sharded index, or (opt-in) a pickle."""
    index = folder / SAFETENSORS_INDEX_NAME
    single = folder / SAFETENSORS_NAME
    if index.is_file():
        return SafetensorsSource(label, _shards_of_index(label, index))
    if single.is_file():
        return SafetensorsSource(label, [single])
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return SafetensorsSource(label, others)
    pickles = [folder / name for name in PICKLE_NAMES if (folder / name).is_file()]
    if pickles:
        if not allow_pickle:
            raise LwmmError(
                f"model {label}: only pickle weights ({pickles[0].name}); convert them to safetensors, "
                "or pass --allow-pickle to load it with torch.load(weights_only=True)"
            )
        return StateDictSource(label, load_pickle_weights(label, pickles[0]))
    raise LwmmError(f"model {label}: no safetensors weights ({SAFETENSORS_NAME} or {SAFETENSORS_INDEX_NAME}) in {folder}")


def _shards_of_index(label: str, index: Path) -> list[Path]:
    """The shard files an index names, each checked to lie inside the model folder.

    A name with ``..``, an absolute path, or a symbolic link leading out of the folder is refused (in
    the Hugging Face cache a snapshot's files link into the repo's own ``blobs/``, which is allowed).
    """
    where = f"model {label}: {index.name}"
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptWeightsError(f"{where} is unreadable ({err.__class__.__name__})") from None
    if not names or not all(isinstance(name, str) for name in names):
        raise CorruptWeightsError(f"{where}: 'weight_map' must map tensor names to shard file names")
    root = _containing_root(index.parent)
    shards = []
    for name in names:
        relative = Path(name)
        if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
            raise CorruptWeightsError(f"{where}: shard {name!r} is not a file name inside the model folder")
        shard = index.parent / relative
        if not shard.is_file():
            raise CorruptWeightsError(f"model {label}: shard {name} listed in {index.name} is missing")
        if root not in shard.resolve().parents:
            raise CorruptWeightsError(f"{where}: shard {name!r} is a link leading out of the model folder")
        shards.append(shard)
    return shards


def _containing_root(folder: Path) -> Path:
    """The folder a model's files must resolve into: the folder itself, or its Hub cache repo folder."""
    resolved = folder.resolve()
    for parent in [resolved, *resolved.parents]:
        if parent.parent.name == "snapshots" and parent.parent.parent.name.startswith("models--"):
            return parent.parent.parent
    return resolved


def _read_header(label: str, file: Path) -> list[_Entry]:
    """Parse and validate a safetensors header so that corrupt files fail before anything is written."""
    where = f"model {label}: {file.name}"
    size = file.stat().st_size
    with open(file, "rb") as handle:
        header_len = header_length(where, handle.read(8), size)
        data_start = 8 + header_len
        infos = parse_header(where, handle.read(header_len), data_size=size - data_start)
    return [_Entry(info, file, data_start + begin, data_start + end) for info, begin, end in infos]


def header_length(where: str, prefix: bytes, size: int) -> int:
    """The header length a safetensors file of ``size`` bytes declares in its first 8 bytes."""
    if len(prefix) < 8:
        raise CorruptWeightsError(f"{where} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > min(_MAX_HEADER_BYTES, size - 8):
        raise CorruptWeightsError(f"{where} is truncated or not a safetensors file (header length {header_len})")
    return int(header_len)


def parse_header(where: str, raw: bytes, *, data_size: int) -> list[tuple[TensorInfo, int, int]]:
    """Each tensor of a safetensors header with its offsets in a data buffer of ``data_size`` bytes, validated as
    strictly as the safetensors library does: the tensors must tile the data buffer exactly, in order (no overlap,
    no gap, no trailing bytes), each with a known dtype and a size matching its shape.

    Local files and Hub files (whose header is read by HTTP range requests) go through this one check.
    """
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys) if raw[:1] == b"{" else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{where} has a corrupt header")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptWeightsError(f"{where}: '__metadata__' must map strings to strings")
    entries = []
    for name, meta in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[meta["dtype"]]
            shape = _naturals(meta["shape"])
            begin, end = _naturals(meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{where}: tensor {name!r} has a corrupt header entry") from None
        info = TensorInfo(name, dtype, shape)
        if end - begin != info.nbytes:
            raise CorruptWeightsError(f"{where}: tensor {name!r} has {end - begin} bytes of data for its "
                                      f"{meta['dtype']}{list(shape)} ({info.nbytes} bytes)")
        entries.append((info, begin, end))
    entries.sort(key=itemgetter(1, 2))
    covered = 0
    for info, begin, end in entries:
        if begin != covered:
            fault = "overlaps the tensor before it" if begin < covered else "leaves a gap before it"
            raise CorruptWeightsError(f"{where}: tensor {info.name!r} {fault} in the data buffer")
        covered = end
    if covered > data_size:
        raise CorruptWeightsError(f"{where} is truncated (the data ends {covered - data_size} bytes past the end of the file)")
    if covered < data_size:
        raise CorruptWeightsError(f"{where} has {data_size - covered} trailing bytes after the tensor data")
    return entries


def _naturals(values: object) -> tuple[int, ...]:
    """A JSON list of integers ≥ 0 (not bools, floats or strings of digits)."""
    if not isinstance(values, list):
        raise ValueError(values)
    for value in values:  # a loop, not all(…): this runs twice per tensor of every model
        if type(value) is not int or value < 0:
            raise ValueError(values)
    return tuple(values)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    unique = dict(pairs)
    if len(unique) != len(pairs):
        raise ValueError("duplicate key")
    return unique
