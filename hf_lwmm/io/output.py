"""Outputs that never lose data: checked before any work, written whole or not at all.

A folder output is written into a staging folder beside it and renamed into place once complete.
Any failure — an exception, Ctrl-C, SIGTERM (``timeout``, ``kill``, Slurm, docker) or SIGHUP —
removes the staging folder; one left by a killed process (SIGKILL, power loss) is removed by the
next run writing the same output. Folders and files get the permissions the user's umask gives.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from hf_lwmm.errors import LwmmError

#: signals that end a run: each raises ``SystemExit(128 + signal)`` inside :func:`staged_folder`
#: (SIGINT keeps raising ``KeyboardInterrupt``), so the cleanup runs
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_KINDS = ("tmp", "old")  # staging folders, and outputs being replaced


def check_output_folder(output: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (), name: str = "output") -> None:
    """Refuse, before any work, an output folder that would lose data or cannot be written.

    ``inputs``: folders read by the run (local models): the output may not be, contain or lie inside one,
    also through symbolic links or relative paths. ``name`` names the argument in the error.
    """
    where = f"{name} {output}"
    output = _absolute(output)
    target = output.resolve()
    if target == Path(target.anchor):
        raise LwmmError(f"{where}: the root folder cannot be an output")
    for folder in inputs:
        source = Path(folder).resolve()
        if target == source:
            raise LwmmError(f"{where}: is the input {folder}; choose another output folder")
        if source in target.parents:
            raise LwmmError(f"{where}: lies inside the input {folder}; choose a folder outside it")
        if target in source.parents:
            raise LwmmError(f"{where}: contains the input {folder}; choose a folder that does not")
    if output.exists():
        if not output.is_dir():
            raise LwmmError(f"{where}: exists and is not a folder")
        if not overwrite and any(output.iterdir()):
            raise LwmmError(f"{where}: exists and is not empty (pass --overwrite to replace it)")
    _check_writable(where, target.parent)


def check_output_file(path: Path, *, name: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file that could not be written: a folder, a path under a file or
    in an unwritable folder, or a suffix the writer does not support (``suffixes``, e.g. ``(".png",)``).
    Missing parent folders are fine: the writer creates them."""
    where = f"{name} {path}"
    if suffixes and path.suffix.lower() not in suffixes:
        raise LwmmError(f"{where}: unsupported file type {path.suffix or '(none)'!r} (use {', '.join(suffixes)})")
    if path.is_dir():
        raise LwmmError(f"{where}: is a folder; give a file name")
    _check_writable(where, path.resolve().parent)


def check_output_dir(path: Path, *, name: str) -> None:
    """Refuse, before any work, a results folder that is a file or cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise LwmmError(f"{name} {path}: exists and is not a folder")
    _check_writable(f"{name} {path}", path.resolve() if path.is_dir() else path.resolve().parent)


def _check_writable(where: str, folder: Path) -> None:
    """``folder`` (or its nearest existing ancestor, where missing folders would be created) accepts a new entry.

    Tried with a real ``mkdir``: permission bits do not tell for root or a read-only file system.
    """
    existing = next(parent for parent in [folder, *folder.parents] if parent.exists())
    if not existing.is_dir():
        raise LwmmError(f"{where}: {existing} is not a folder")
    probe = existing / f".lwmm-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as err:
        raise LwmmError(f"{where}: cannot write in {existing} ({err.strerror or err.__class__.__name__})") from None
    probe.rmdir()


@contextmanager
def staged_folder(output: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``output``; it becomes ``output`` when the block completes.

    On any failure the staging folder (and any parent folder made for it) is removed. The final rename
    refuses an output other than the one there at the start (another run wrote it meanwhile); with
    ``overwrite`` the output seen at the start is replaced, without it that one must still be empty.
    """
    output = _absolute(output)
    existed = _identity(output)
    made = _make_parents(output.parent)
    remove_stale_staging(output)
    staging = _sibling(output, "tmp")
    with _signals_raise():
        try:
            staging.mkdir()
            yield staging
            _move_into_place(staging, output, existed=existed, replace=existed is not None and overwrite)
        except BaseException:
            _ignore_signals()  # a second Ctrl-C or SIGTERM must not cut the cleanup short
            shutil.rmtree(staging, ignore_errors=True)
            for folder in reversed(made):
                _remove_if_empty(folder)
            raise


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove staging folders (and half-replaced outputs) that dead processes of this host left beside ``output``."""
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.(?P<pid>\d+)-[0-9a-f]{{8}}-(?P<host>.+)\.lwmm-(?:{'|'.join(_KINDS)})$")
    removed = []
    if output.parent.is_dir():
        for entry in output.parent.iterdir():
            match = pattern.match(entry.name)
            if match and match["host"] == _host() and not _alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _absolute(path: Path) -> Path:
    """``path`` made absolute with ``.`` and ``..`` removed, so that it has a name and a parent (``-o .``)."""
    return Path(os.path.abspath(path))


def _sibling(output: Path, kind: str) -> Path:
    return output.with_name(f".{output.name}.{os.getpid()}-{secrets.token_hex(4)}-{_host()}.lwmm-{kind}")


def _host() -> str:
    return re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = [parent for parent in [folder, *folder.parents] if not parent.exists()][::-1]
    for parent in missing:
        parent.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _identity(path: Path) -> tuple[int, int] | None:
    """What tells a folder from one put in its place: device and inode (``None``: nothing there)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _move_into_place(staging: Path, output: Path, *, existed: tuple[int, int] | None, replace: bool) -> None:
    """Rename ``staging`` to ``output``, refusing an output other than the one seen at the start (``existed``)."""
    appeared = LwmmError(f"output {output}: appeared while this run was writing it (another run?); this run's result is discarded")
    if _identity(output) not in (None, existed):
        raise appeared
    if not replace:
        try:
            staging.rename(output)  # onto nothing, or onto a folder still empty; never onto files
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise appeared from None
            raise
        return
    retired = _sibling(output, "old")
    output.rename(retired)
    try:
        staging.rename(output)
    except OSError as err:
        retired.rename(output)
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise appeared from None
        raise
    if retired.is_symlink():
        retired.unlink()
    else:
        shutil.rmtree(retired, ignore_errors=True)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` (SIGINT into ``KeyboardInterrupt``) while the block runs.

    Only the main thread can handle signals; elsewhere nothing changes. Ignored signals stay ignored
    (``nohup`` ignores SIGHUP).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else _exit_on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
