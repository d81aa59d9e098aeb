"""sha256 of weights files: what a recipe records of its sources and of its output.

Files are hashed straight from a read-only memory map, a chunk at a time (hashlib releases the GIL, so
hashing runs beside the merge's kernels on another core); each chunk's pages leave the resident set once
hashed, so hashing a file costs no copy and no memory in proportion to its size.

A merge hashes every source on every run. :func:`remembered_sha256` skips files hashed before and unchanged
since, by git's rule: the file's device, inode, size and modification and change times (the change time
cannot be set back by a user) are what they were, and the file had not changed for
:data:`RACY_SECONDS` when it was hashed (a file changed within the clock's granularity of the hash could
otherwise keep its times). The hashes live in :func:`cache_folder`, one small JSON file per weights file.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
import time
from pathlib import Path

#: files that hold a model folder's weights (what :func:`hf_lwmm.io.reader.open_weights` may read)
WEIGHTS_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
#: bytes hashed per step before their pages are released (a whole number of pages)
CHUNK = 1 << 24
#: the environment variable naming the folder of remembered hashes (default ``~/.cache/hf_lwmm``)
CACHE_VARIABLE = "HF_LWMM_CACHE"
#: a file changed less than this long before it was hashed is not remembered (its times may not show a change)
RACY_SECONDS = 1.0


def sha256_of(path: Path) -> str:
    """The sha256 of the file's bytes, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size:
            with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as mapped:
                for start in range(0, size, CHUNK):
                    with memoryview(mapped)[start:start + CHUNK] as chunk:
                        digest.update(chunk)
                    if hasattr(mapped, "madvise"):  # not on Windows
                        mapped.madvise(mmap.MADV_DONTNEED, start, min(CHUNK, size - start))
    return digest.hexdigest()


def cache_folder() -> Path:
    """Where remembered hashes live: ``$HF_LWMM_CACHE/sha256``, by default ``~/.cache/hf_lwmm/sha256``."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "hf_lwmm") / "sha256"


def remembered_sha256(path: Path, *, cache: Path) -> str:
    """The file's sha256: remembered in ``cache`` if the file is unchanged since it was hashed, else hashed now.

    A hash is remembered only if the file did not change while it was hashed nor in the :data:`RACY_SECONDS`
    before; a cache that cannot be read or written costs only the hash.
    """
    path = Path(path).resolve()
    before = _identity(path)
    entry_file = cache / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
    try:
        entry = json.loads(entry_file.read_text())
        if entry["file"] == before and isinstance(entry["sha256"], str):
            return entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    started = time.time_ns()
    digest = sha256_of(path)
    settled = max(before["mtime_ns"], before["ctime_ns"]) < started - RACY_SECONDS * 1e9
    if settled and _identity(path) == before:
        _write_atomically(entry_file, json.dumps({"path": str(path), "file": before, "sha256": digest}))
    return digest


def weights_sha256(folder: Path, *, cache: Path | None = None) -> dict[str, str]:
    """sha256 of each weights file of a model folder, by file name; with ``cache``, remembered ones are not rehashed."""
    files = [path for pattern in WEIGHTS_PATTERNS for path in sorted(Path(folder).glob(pattern))]
    return {path.name: sha256_of(path) if cache is None else remembered_sha256(path, cache=cache) for path in files}


def _identity(path: Path) -> dict[str, int]:
    status = path.stat()
    return {"device": status.st_dev, "inode": status.st_ino, "size": status.st_size,
            "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns}


def _write_atomically(path: Path, text: str) -> None:
    """Write a cache entry whole or not at all (concurrent merges may write the same one); failures are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".entry-")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
