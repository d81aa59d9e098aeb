"""Lazy tensor access to a model's weights, one tensor at a time.

Safetensors files are read with positioned reads (``os.pread``) into fresh buffers instead of a
memory map: pages of a map stay in the process's resident set until it is closed, so merging M
models through maps grows peak RSS with M. A fresh buffer is also safe to modify.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of a stored tensor, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


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

    def get(self, name: str, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Return the tensor in a writable buffer of its own (not memory-mapped).

        ``into``: a 1-D uint8 buffer of at least the tensor's size to read into instead of a fresh one
        (the tensor is then a view of it, valid until the buffer is reused).
        """
        raise NotImplementedError

    def _buffer(self, name: str, into: torch.Tensor | None) -> torch.Tensor:
        size = self.infos[name].nbytes
        if into is None:
            return torch.empty(size, dtype=torch.uint8)  # unlike bytearray, not zero-filled first
        if into.dtype != torch.uint8 or into.dim() != 1 or into.numel() < size:
            raise ValueError(f"buffer for {name!r} must be 1-D uint8 with at least {size} bytes")
        return into[:size]


class SafetensorsSource(TensorSource):
    """One or several safetensors shards, read by positioned reads."""

    def __init__(self, label: str, files: list[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        for file in files:
            for entry in _read_header(label, file):
                if entry.info.name in self._entries:
                    raise CorruptWeightsError(f"model {label}: tensor {entry.info.name!r} is stored twice "
                                              f"({self._entries[entry.info.name].file.name}, {file.name})")
                self._entries[entry.info.name] = entry
        self._handles: dict[Path, BinaryIO] = {}  # one open file per shard, closed with the source
        self._opening = threading.Lock()
        super().__init__(label, {name: entry.info for name, entry in self._entries.items()})

    def get(self, name: str, *, into: torch.Tensor | None = None) -> torch.Tensor:
        entry = self._entries[name]
        size = entry.stop - entry.start
        if size == 0:
            return torch.empty(entry.info.shape, dtype=entry.info.dtype)
        with self._opening:  # read-ahead threads may ask for the same shard at once: open it once
            handle = self._handles.get(entry.file)
            if handle is None:
                handle = self._handles[entry.file] = open(entry.file, "rb", buffering=0)
        buffer = self._buffer(name, into)
        view, done = buffer.numpy().data, 0
        while done < size:
            read = os.preadv(handle.fileno(), [view[done:]], entry.start + done)
            if read <= 0:
                raise CorruptWeightsError(f"model {self.label}: {entry.file.name} is truncated at tensor {name!r}")
            done += read
        return buffer.view(entry.info.dtype).reshape(entry.info.shape)


class StateDictSource(TensorSource):
    """Tensors already in memory (pickle checkpoints loaded with ``weights_only=True``)."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors
        super().__init__(label, {n: TensorInfo(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()})

    def get(self, name: str, *, into: torch.Tensor | None = None) -> torch.Tensor:
        tensor = self._tensors[name]
        if not tensor.numel():
            return tensor.clone()
        return self._buffer(name, into).view(tensor.dtype).reshape(tensor.shape).copy_(tensor)


@dataclass(frozen=True)
class PlannedRead:
    """One tensor of one model that a :class:`ReadAhead` will read."""

    source: TensorSource
    name: str
    #: read into one of the read-ahead's reused buffers (valid until the next read is drawn) instead of a fresh tensor
    reused: bool = False


class ReadAhead:
    """Reads a known sequence of tensors in order, ``depth`` reads ahead of the consumer, on a small thread pool.

    Positioned reads release the GIL, so the next tensors are read while the consumer computes. Reused reads
    rotate through ``depth + 1`` buffers of the largest such tensor's size: at most the drawn read and the
    ``depth`` reads after it are alive, so memory does not grow with the length of the sequence or the number
    of models. ``depth=0`` reads each tensor when it is drawn, on the caller's thread. Use as a context manager.
    """

    #: reads running at once (page-cache copies: more threads than this only compete for the cores)
    WORKERS = 2

    def __init__(self, reads: list[PlannedRead], *, depth: int) -> None:
        self._reads = reads
        self._depth = depth
        largest = max((read.source.infos[read.name].nbytes for read in reads if read.reused), default=0)
        self._buffers = [torch.empty(largest, dtype=torch.uint8) for _ in range(depth + 1)] if largest else []
        self._reused = 0  # reused reads started so far (picks the buffer)
        self._started = 0
        self._drawn = 0
        self._pending: deque[Callable[[], torch.Tensor]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=min(depth, self.WORKERS), thread_name_prefix="read-ahead") if depth else None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def next(self) -> torch.Tensor:
        """The next tensor of the sequence (a reused one is valid until the next call)."""
        while len(self._pending) <= self._depth and self._started < len(self._reads):
            self._pending.append(self._start(self._reads[self._started]))
            self._started += 1
        self._drawn += 1
        return self._pending.popleft()()

    def skip_to(self, position: int) -> None:
        """Drop the reads before ``position`` (a count from the start of the sequence) not drawn yet."""
        while self._drawn < position:
            self.next()

    def _start(self, read: PlannedRead) -> Callable[[], torch.Tensor]:
        into = None
        if read.reused:
            into = self._buffers[self._reused % len(self._buffers)]
            self._reused += 1
        if self._pool is None:
            return functools.partial(read.source.get, read.name, into=into)
        return self._pool.submit(read.source.get, read.name, into=into).result


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
            shape = tuple(_natural(dim) for dim in meta["shape"])
            begin, end = (_natural(offset) for offset in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{where}: tensor {name!r} has a corrupt header entry") from None
        info = TensorInfo(name, dtype, shape)
        if end - begin != info.nbytes:
            raise CorruptWeightsError(f"{where}: tensor {name!r} has {end - begin} bytes of data for its "
                                      f"{meta['dtype']}{list(shape)} ({info.nbytes} bytes)")
        entries.append((info, begin, end))
    entries.sort(key=lambda entry: (entry[1], entry[2]))
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


def _natural(value: object) -> int:
    """A JSON integer ≥ 0 (not a bool, a float or a string of digits)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


#: files that hold a model folder's weights (what open_weights may read)
WEIGHTS_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def sha256_of(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of each weights file of a model folder, by file name."""
    return {path.name: sha256_of(path) for pattern in WEIGHTS_PATTERNS for path in sorted(Path(folder).glob(pattern))}
