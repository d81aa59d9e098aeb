"""Streaming safetensors writer: the header is known in advance, so tensors go straight to disk.

Only the tensor being written is ever in memory. Shards and their index follow transformers'
naming (``model-00001-of-00002.safetensors`` + ``model.safetensors.index.json``). Each file's sha256 is
taken on a thread that reads back what was written (from the page cache), so the writer never waits for
the hash and holds no tensor for it: the hash is of the bytes in the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch

from hf_lwmm.errors import FieldError
from hf_lwmm.io.reader import DTYPE_NAMES, SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME, TensorInfo, read_at

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
#: bytes written per system call: a 4×B5 merge's loop, from the CLI, took 1.00 s writing each tensor (up to 9 MB) at
#: once and 0.76 s in pieces of 256 KiB (64 and 128 KiB: 0.78–0.79 s; median of 6, alternating); 1 MiB pieces were
#: no faster than whole writes
_WRITE_CHUNK = 1 << 18
#: bytes the hash thread reads back per read
_HASH_CHUNK = 1 << 20
#: written bytes handed to the hash thread at once (fewer hand-offs than one per tensor)
_HASH_STEP = 1 << 24
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int, *, name: str = "max_shard_size") -> int:
    """``"5GB"`` → 5·10⁹ bytes, as transformers' ``max_shard_size`` reads it; the one parser of sizes.

    Raises :class:`~hf_lwmm.errors.FieldError` naming ``name`` for anything but a positive size.
    """
    match = _SIZE.match(size) if isinstance(size, str) else None
    if isinstance(size, int) and not isinstance(size, bool):
        count = size
    elif match:
        count = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    else:
        raise FieldError(name, f"{size!r}: not a size (use e.g. 500MB, 5GB or 2GiB)")
    if count < 1:
        raise FieldError(name, f"{size!r}: must be at least one byte")
    return count


def _header_bytes(infos: list[TensorInfo], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for info in infos:
        header[info.name] = {"dtype": DTYPE_NAMES[info.dtype], "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data on 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def _split_into_shards(infos: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    shards: list[list[TensorInfo]] = [[]]
    used = 0
    for info in infos:
        if shards[-1] and used + info.nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(info)
        used += info.nbytes
    return shards


def shard_layout(infos: list[TensorInfo], max_shard_bytes: int) -> list[tuple[str, list[TensorInfo]]]:
    """Output file names (transformers' shard naming) and the tensors each holds, in order."""
    shards = _split_into_shards(infos, max_shard_bytes)
    count = len(shards)
    names = [SAFETENSORS_NAME] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    return list(zip(names, shards))


class ShardedSafetensorsWriter:
    """Write tensors in a planned order into one or more safetensors files.

    Use as a context manager; call :meth:`write` with the planned tensors in order, one or a run of them at a time.
    ``sha256`` maps each written file name to the hash of its bytes, computed while writing.
    """

    def __init__(self, folder: Path, plan: list[TensorInfo], *, max_shard_size: str | int = "5GB",
                 metadata: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.metadata = {"format": "pt", **(metadata or {})}
        self._queue = shard_layout(plan, parse_size(max_shard_size))
        self._expected = iter([info for _, shard in self._queue for info in shard])
        self._left_in_shard = 0  # planned tensors the open shard still takes
        self._handle: BinaryIO | None = None
        self._written = self._handed = 0  # bytes written to the open shard, and handed to the hash thread
        self._hash = hashlib.sha256()
        self._weight_map: dict[str, str] = {}
        self.total_size = sum(info.nbytes for info in plan)
        self.sha256: dict[str, str] = {}
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="output-sha256")
        self._hashing: list[Future[None]] = []  # the current shard's hash steps, in order
        self._hash_buffer = memoryview(bytearray(_HASH_CHUNK))  # the hash thread's own

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=exc_type is not None)  # before the file it reads is closed
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if exc_type is None:
            self._finish()

    def write(self, names: Sequence[str], data: torch.Tensor) -> None:
        """Write the next planned tensors, ``names`` in order, whose elements ``data`` holds back to back: one
        tensor in its planned shape, or several of one dtype as one 1-D tensor (cut only where a shard ends, and
        written in pieces of :data:`_WRITE_CHUNK` bytes)."""
        infos = []
        for name in names:
            expected = next(self._expected, None)
            if expected is None or expected.name != name:
                raise RuntimeError(f"tensor {name!r} written out of the planned order (expected {expected and expected.name!r})")
            infos.append(expected)
        shape = infos[0].shape if len(infos) == 1 else (sum(info.numel for info in infos),)
        if any(info.dtype != data.dtype for info in infos) or tuple(data.shape) != shape:
            planned = ", ".join(f"{info.dtype}{info.shape}" for info in infos)
            raise RuntimeError(f"tensors {list(names)} are {data.dtype}{tuple(data.shape)}, planned {planned}")
        raw = data.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data
        while infos:
            if not self._left_in_shard:
                self._open_next_shard()
            count = min(len(infos), self._left_in_shard)  # the shard's next planned tensors are these
            size = sum(info.nbytes for info in infos[:count])
            self._emit(raw[:size])
            raw, infos, self._left_in_shard = raw[size:], infos[count:], self._left_in_shard - count
            if not self._left_in_shard:
                self._close_shard()

    def _open_next_shard(self) -> None:
        file_name, shard = self._queue.pop(0)
        self._file_name = file_name
        self._left_in_shard = len(shard)
        self._handle = open(self.folder / file_name, "w+b", buffering=0)  # unbuffered: what is written is in the file, to read back
        self._written = self._handed = 0
        self._hash = hashlib.sha256()
        self._emit(_header_bytes(shard, self.metadata))
        self._weight_map.update({info.name: file_name for info in shard})

    def _emit(self, data: bytes | memoryview) -> None:
        assert self._handle is not None
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):  # a raw write may write less than asked
            done += self._handle.write(view[done:done + _WRITE_CHUNK]) or 0
        self._written += done
        if self._written - self._handed >= _HASH_STEP:
            self._hand_to_hash()

    def _hand_to_hash(self) -> None:
        """Give the bytes written since the last hand-off to the hash thread."""
        assert self._handle is not None
        if self._written > self._handed:
            self._hashing.append(self._hasher.submit(self._hash_range, self._hash, self._handle.fileno(), self._handed,
                                                     self._written - self._handed))
            self._handed = self._written

    def _hash_range(self, digest: hashlib._Hash, fileno: int, start: int, size: int) -> None:
        """Feed ``size`` bytes of the open file from ``start`` into ``digest`` (on the hash thread, in order)."""
        while size:
            chunk = self._hash_buffer[:min(size, _HASH_CHUNK)]
            if read_at(fileno, chunk, start) != len(chunk):
                raise OSError(f"{self._file_name}: could not read back the {size} bytes written at offset {start}")
            digest.update(chunk)
            start, size = start + len(chunk), size - len(chunk)

    def _close_shard(self) -> None:
        assert self._handle is not None
        self._hand_to_hash()
        for step in self._hashing:  # every step done, and none failed
            step.result()
        self._hashing = []
        self._handle.close()
        self._handle = None
        self.sha256[self._file_name] = self._hash.hexdigest()

    def _finish(self) -> None:
        if next(self._expected, None) is not None or self._queue:
            raise RuntimeError("writer closed before every planned tensor was written")
        if len(self.sha256) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self._weight_map.items()))}
            (self.folder / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
