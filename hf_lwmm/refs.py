"""Model references: a local folder, or a Hub repo ``org/name[@revision][:subfolder]``; resolving and downloading them.

``:`` separates the subfolder because git forbids it in ref names and the Hub forbids it in repo ids,
so ``org/name@refs/pr/1:checkpoint-4000`` is unambiguous.

This module is the one place that talks to the Hub to *pull* models, and maps every Hub failure to
one :class:`LwmmError` line. A Hub reference is resolved in two steps, so a merge can be checked
before any weight is downloaded:

1. :func:`resolve_remote`: the commit, the file list, ``config.json`` and the safetensors headers,
   read with two small HTTP range requests per file (no weight byte). A reference without revision
   whose ``main`` holds only pickles uses the Hub's safetensors conversion pull request when there is
   one (the rule transformers follows); pickles themselves are used only when allowed.
2. :func:`download`: the weights of that exact commit, into the Hugging Face cache.

:func:`locate` does step 1 for any reference (a local folder, or the cache when offline, is already a
folder), :func:`open_headers` gives its tensors for aligning, :func:`fetch` does step 2;
:func:`resolve` does both for callers that want a folder at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hf_lwmm.console import note
from hf_lwmm.errors import LwmmError
from hf_lwmm.io.reader import (
    PICKLE_INDEX_NAME,
    PICKLE_NAME,
    PICKLE_NAMES,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    TensorInfo,
    TensorSource,
    header_length,
    open_weights,
    parse_header,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import ModelInfo

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
#: Files fetched from the Hub cache when offline: never pickles (unless allowed), never code.
HUB_ALLOW_PATTERNS = (CONFIG_NAME, PREPROCESSOR_NAME, "*.safetensors", SAFETENSORS_INDEX_NAME)
#: The pull request the Hub's conversion bot opens, as transformers' ``safetensors_conversion`` looks for it.
CONVERSION_PR_TITLE = "Adding `safetensors` variant of this model"
CONVERSION_BOT = "SFconvertbot"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_PICKLE_SHARD = re.compile(r"^pytorch_model-\d+-of-\d+\.bin$")


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from; exactly one of ``path`` or ``repo_id`` is set."""

    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    subfolder: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Read a reference: an existing folder wins, then ``org/name[@revision][:subfolder]``."""
        text = text.strip()
        if not text:
            raise LwmmError("empty model reference")
        local = Path(text).expanduser()
        if local.exists() or text.startswith((".", "/", "~")) or os.sep + os.sep in text:
            return cls(path=local)
        spec, colon, subfolder = text.partition(":")
        repo_id, at, revision = spec.partition("@")
        if not is_repo_id(repo_id):
            raise LwmmError(f"model reference {text!r}: not an existing folder nor a Hub repo id 'org/name[@revision][:subfolder]'")
        if at and not revision:
            raise LwmmError(f"model reference {text!r}: empty revision after '@' (give a branch, tag, commit or refs/pr/N)")
        subfolder = subfolder.strip("/")
        if colon and not subfolder:
            raise LwmmError(f"model reference {text!r}: empty subfolder after ':'")
        if any(part in ("", ".", "..") for part in subfolder.split("/")) and subfolder:
            raise LwmmError(f"model reference {text!r}: subfolder {subfolder!r} must be a plain path inside the repo")
        return cls(repo_id=repo_id, revision=revision or None, subfolder=subfolder or None)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        text = self.repo_id or ""
        if self.revision:
            text += f"@{self.revision}"
        if self.subfolder:
            text += f":{self.subfolder}"
        return text

    def pinned(self, commit: str | None) -> ModelRef:
        """The same reference at a resolved commit (local folders are returned as they are)."""
        if self.is_local or commit is None:
            return self
        return ModelRef(repo_id=self.repo_id, revision=commit, subfolder=self.subfolder)

    def at(self, revision: str | None) -> ModelRef:
        """The same repo and subfolder at another revision."""
        return ModelRef(repo_id=self.repo_id, revision=revision, subfolder=self.subfolder)

    @property
    def repo(self) -> str:
        """The Hub repo id (of a Hub reference)."""
        if self.repo_id is None:
            raise ValueError(f"{self} is a local folder, not a Hub reference")
        return self.repo_id

    def path_in_repo(self, name: str) -> str:
        return f"{self.subfolder}/{name}" if self.subfolder else name


class _Configured:
    """What a model's ``config.json`` tells before its weights are read."""

    config: dict[str, Any]

    @property
    def num_labels(self) -> int | None:
        id2label = self.config.get("id2label")
        return len(id2label) if isinstance(id2label, dict) else self.config.get("num_labels")

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


@dataclass(frozen=True)
class ResolvedModel(_Configured):
    """A reference resolved to a folder on disk holding ``config.json`` and weights."""

    ref: ModelRef
    folder: Path
    commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class RemoteModel(_Configured):
    """A Hub reference resolved to a commit, known without any weight byte.

    ``ref`` names ``refs/pr/N`` when the weights come from the conversion pull request; ``files`` are
    the repo paths :func:`download` fetches; ``tensors`` come from the safetensors headers (``None``
    for pickle weights, whose names are known only once loaded).
    """

    ref: ModelRef
    commit: str
    config: dict[str, Any] = field(hash=False, compare=False)
    files: tuple[str, ...]
    tensors: dict[str, TensorInfo] | None = field(default=None, hash=False, compare=False)


class HubUnreachableError(LwmmError):
    """The Hub could not be reached (network down, timeout): :func:`resolve` falls back to the cache."""


def is_repo_id(text: str) -> bool:
    """``namespace/name`` as the Hub spells repo ids (no revision, no subfolder, no ``..`` or ``--``)."""
    if not _REPO_ID.match(text) or ".." in text or "--" in text:
        return False
    return not any(part.startswith((".", "-")) or part.endswith((".", "-")) for part in text.split("/"))


# ------------------------------------------------------------------------------------------- resolve


def resolve(ref: ModelRef | str, *, token: str | bool | None = None, local_files_only: bool | None = None,
            allow_pickle: bool = False) -> ResolvedModel:
    """Find the folder of a reference: a local folder, or a Hub repo downloaded (or read from the cache when offline)."""
    return fetch(locate(ref, token=token, local_files_only=local_files_only, allow_pickle=allow_pickle), token=token)


def locate(ref: ModelRef | str, *, token: str | bool | None = None, local_files_only: bool | None = None,
           allow_pickle: bool = False) -> ResolvedModel | RemoteModel:
    """Resolve a reference without downloading weights: a folder on disk (local, or cached when offline) or a
    :class:`RemoteModel` (online Hub reference) for :func:`fetch` to download once the merge is known to work."""
    from huggingface_hub import constants

    if isinstance(ref, str):
        ref = ModelRef.parse(ref)
    if ref.is_local:
        assert ref.path is not None
        if not ref.path.is_dir():
            raise LwmmError(f"model {ref}: no such folder")
        return _checked(ref, ref.path, commit=None)
    if local_files_only or constants.HF_HUB_OFFLINE:
        return _from_cache(ref, token=token, allow_pickle=allow_pickle)
    try:
        return resolve_remote(ref, token=token, allow_pickle=allow_pickle)
    except HubUnreachableError:
        return _from_cache(ref, token=token, allow_pickle=allow_pickle)


def fetch(model: ResolvedModel | RemoteModel, *, token: str | bool | None = None) -> ResolvedModel:
    """The folder of a located model: downloads a :class:`RemoteModel`'s files, returns a folder as it is."""
    return download(model, token=token) if isinstance(model, RemoteModel) else model


def open_headers(model: ResolvedModel | RemoteModel, *, token: str | bool | None = None,
                 allow_pickle: bool = False) -> TensorSource:
    """The tensor names, dtypes and shapes of a located model, for aligning before any weight is downloaded.

    A Hub model's come from its safetensors headers; pickle weights must be downloaded and loaded to be known.
    """
    if isinstance(model, RemoteModel) and model.tensors is not None:
        return TensorSource(str(model.ref), model.tensors)
    folder = fetch(model, token=token)
    return open_weights(folder.folder, label=str(folder.ref), allow_pickle=allow_pickle)


def resolve_remote(ref: ModelRef | str, *, token: str | bool | None = None, allow_pickle: bool = False) -> RemoteModel:
    """Resolve a Hub reference to a commit, its files, config and safetensors headers; no weight is downloaded.

    Without an explicit revision, a ``main`` without safetensors weights falls back to the conversion
    pull request (see :func:`conversion_pr`), logged in one line; then, with ``allow_pickle``, to
    ``pytorch_model.bin`` (or its sharded index).
    """
    from huggingface_hub import HfApi

    if isinstance(ref, str):
        ref = ModelRef.parse(ref)
    if ref.is_local:
        raise ValueError(f"resolve_remote needs a Hub reference, got the local folder {ref}")
    api = HfApi(token=token)
    with _hub_errors(f"model {ref}", ref):
        info = api.model_info(ref.repo, revision=ref.revision, files_metadata=True)
        listing = _listing(info, ref)
        number = None  # the conversion PR, looked up only when main has no safetensors
        if not _safetensors_files(listing) and ref.revision is None:
            number = conversion_pr(api, ref.repo, main_head=info.sha)
            if number is not None:
                pr_ref = ref.at(f"refs/pr/{number}")
                pr_info = api.model_info(ref.repo, revision=pr_ref.revision, files_metadata=True)
                pr_listing = _listing(pr_info, pr_ref)
                if _safetensors_files(pr_listing):
                    note(f"model {ref}: main has only pickle weights; using the Hub's safetensors conversion "
                         f"pull request {pr_ref} (commit {pr_info.sha})")
                    ref, info, listing = pr_ref, pr_info, pr_listing
        assert info.sha is not None
        weights = _safetensors_files(listing)
        if weights:
            shards = _shards(api, ref, info.sha, weights)
            missing = [path for path in shards if path not in listing]
            if missing:
                raise LwmmError(f"model {ref}: shard {missing[0]} listed in {SAFETENSORS_INDEX_NAME} is missing")
            tensors = _remote_tensors(api, ref, info.sha, {path: listing[path] for path in shards}, token=token)
        elif allow_pickle and any(ref.path_in_repo(name) in listing for name in PICKLE_NAMES):
            shards, tensors = _pickle_files(api, ref, info.sha, listing), None
        else:
            if ref.revision is not None:  # an explicit revision never switches to the PR, but the error names it
                number = conversion_pr(api, ref.repo, main_head=None)
            raise _missing_weights_error(ref, listing, number)
        config = _remote_config(api, ref, info.sha, listing)
    extras = [path for path in (ref.path_in_repo(PREPROCESSOR_NAME),) if path in listing]
    return RemoteModel(ref, info.sha, config, (ref.path_in_repo(CONFIG_NAME), *extras, *shards), tensors)


def download(remote: RemoteModel, *, token: str | bool | None = None) -> ResolvedModel:
    """Download the files of a resolved Hub model (its config and weights, at its commit) into the cache."""
    files = snapshot(remote.ref, list(remote.files), token=token)
    if files.name != remote.commit:
        raise LwmmError(f"model {remote.ref}: moved on the Hub (now at {files.name}) while it was checked at "
                        f"{remote.commit}; run again")
    folder = files / remote.ref.subfolder if remote.ref.subfolder else files
    return _checked(remote.ref, folder, commit=remote.commit)


def download_file(ref: ModelRef, *, token: str | bool | None = None) -> tuple[Path, str]:
    """One file of a Hub repo (``org/name[@revision]:path/to/file``): its path in the cache and its commit."""
    if ref.subfolder is None:
        raise LwmmError(f"{ref}: name the file in the repo after ':' (org/name[@revision]:path/to/file)")
    from huggingface_hub import HfApi, hf_hub_download

    with _hub_errors(str(ref), ref):
        commit = HfApi(token=token).model_info(ref.repo, revision=ref.revision).sha
        assert commit is not None
        return Path(hf_hub_download(ref.repo, ref.subfolder, revision=commit, token=token)), commit


def conversion_pr(api: HfApi, repo_id: str, *, main_head: str | None) -> int | None:
    """The number of the open safetensors conversion PR whose parent is ``main``'s head, as transformers finds it.

    transformers' ``safetensors_conversion.previous_pr``: an open pull request titled
    ``Adding `safetensors` variant of this model``, opened by the Hub's conversion bot, whose first
    parent is the head of ``main`` (so it converts exactly the weights ``main`` holds).
    """
    head = main_head or api.list_repo_commits(repo_id)[0].commit_id
    for discussion in api.get_repo_discussions(repo_id, author=CONVERSION_BOT, discussion_type="pull_request",
                                               discussion_status="open"):
        if (discussion.title == CONVERSION_PR_TITLE and discussion.status == "open" and discussion.is_pull_request
                and discussion.author == CONVERSION_BOT and discussion.git_reference):
            commits = api.list_repo_commits(repo_id, revision=discussion.git_reference)
            if len(commits) > 1 and commits[1].commit_id == head:
                return discussion.num
    return None


# ------------------------------------------------------------------------------------------- helpers


def _listing(info: ModelInfo, ref: ModelRef) -> dict[str, int]:
    """Path → size of every file of the commit directly in the reference's subfolder (or the root)."""
    prefix = ref.path_in_repo("")
    listing = {sibling.rfilename: int(sibling.size or 0) for sibling in info.siblings or []
               if sibling.rfilename.startswith(prefix) and "/" not in sibling.rfilename[len(prefix):]}
    if ref.subfolder and not listing:
        raise LwmmError(f"model {ref}: subfolder {ref.subfolder!r} holds no config.json or safetensors weights")
    return listing


def _safetensors_files(listing: dict[str, int]) -> list[str]:
    """The weights :func:`~hf_lwmm.io.reader.open_weights` would open: the index, ``model.safetensors`` or a lone file."""
    for name in (SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME):
        found = [path for path in listing if PurePosixPath(path).name == name]
        if found:
            return found
    others = [path for path in listing if path.endswith(".safetensors")]
    return others if len(others) == 1 else []


def _shards(api: HfApi, ref: ModelRef, commit: str, weights: list[str]) -> list[str]:
    """The safetensors files to read: the shards an index lists (beside it), or the single file."""
    (path,) = weights
    if not path.endswith(".index.json"):
        return [path]
    return [ref.path_in_repo(name) for name in _index_shards(api, ref, commit, path)]


def _index_shards(api: HfApi, ref: ModelRef, commit: str, index_path: str) -> list[str]:
    from huggingface_hub import hf_hub_download

    index = Path(hf_hub_download(ref.repo, index_path, revision=commit, token=api.token))
    try:
        names = list(dict.fromkeys(str(name) for name in json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LwmmError(f"model {ref}: unreadable {PurePosixPath(index_path).name} ({err.__class__.__name__})") from None
    outside = [name for name in names if PurePosixPath(name).name != name or name in ("", ".", "..")]
    if outside:
        raise LwmmError(f"model {ref}: {PurePosixPath(index_path).name} lists {outside[0]!r}, not a file beside it")
    return names


def _pickle_files(api: HfApi, ref: ModelRef, commit: str, listing: dict[str, int]) -> list[str]:
    """``pytorch_model.bin``, or a sharded index and its ``pytorch_model-0000k-of-0000n.bin`` shards."""
    index = ref.path_in_repo(PICKLE_INDEX_NAME)
    if index not in listing:
        return [ref.path_in_repo(PICKLE_NAME)]
    names = _index_shards(api, ref, commit, index)
    unexpected = [name for name in names if not _PICKLE_SHARD.match(name)]
    if unexpected:
        raise LwmmError(f"model {ref}: {PICKLE_INDEX_NAME} lists {unexpected[0]!r}, not a pytorch_model shard")
    return [index, *(ref.path_in_repo(name) for name in names)]


def _remote_tensors(api: HfApi, ref: ModelRef, commit: str, files: dict[str, int], *,
                    token: str | bool | None) -> dict[str, TensorInfo]:
    """Tensor infos from the safetensors headers, each read with two range requests (length, then header).

    ``HfApi.get_safetensors_metadata`` would fetch the first 100 kB of every file, weights included;
    asking for exactly the header reads no weight byte, and the headers are checked like local ones.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    tensors: dict[str, TensorInfo] = {}
    headers = build_hf_headers(token=token)
    for path, size in files.items():
        if size < 8:
            raise LwmmError(f"model {ref}: {path} is too short to be a safetensors file")
        url = hf_hub_url(ref.repo, path, revision=commit, endpoint=api.endpoint)
        where = f"model {ref}: {PurePosixPath(path).name}"
        length = header_length(where, _read_range(url, headers, 0, 8), size)
        for info, _, _ in parse_header(where, _read_range(url, headers, 8, 8 + length), data_size=size - 8 - length):
            tensors[info.name] = info
    return tensors


def _read_range(url: str, headers: dict[str, str], start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of a Hub file (an HTTP range request, redirects followed as to the Hub's storage)."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().get(url, headers={**headers, "Range": f"bytes={start}-{stop - 1}"}, follow_redirects=True)
    hf_raise_for_status(response)
    return response.content[: stop - start]


def _remote_config(api: HfApi, ref: ModelRef, commit: str, listing: dict[str, int]) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = ref.path_in_repo(CONFIG_NAME)
    if path not in listing:
        raise LwmmError(f"model {ref}: no {CONFIG_NAME} in the repo" + (f" under {ref.subfolder}/" if ref.subfolder else ""))
    return _read_config(ref, Path(hf_hub_download(ref.repo, path, revision=commit, token=api.token)))


def _missing_weights_error(ref: ModelRef, listing: dict[str, int], number: int | None) -> LwmmError:
    """Why a revision has no safetensors weights, and what to do: the flag, the conversion PR, or ``convert``."""
    names = [PurePosixPath(path).name for path in listing]
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    where = f" under {ref.subfolder}/" if ref.subfolder else ""
    if not pickles:
        return LwmmError(f"model {ref}: the repo has no safetensors weights{where}")
    if not any(name in PICKLE_NAMES for name in names):
        file = ModelRef(repo_id=ref.repo, revision=ref.revision, subfolder=ref.path_in_repo(pickles[0]))
        return LwmmError(f"model {ref}: the repo has only pickle weights ({pickles[0]}); if it is an mmsegmentation "
                         f"checkpoint, convert it with `lwmm-hub convert {file} --output DIR` and merge that folder")
    pr = f", or merge its safetensors conversion pull request {ref.at(f'refs/pr/{number}')}" if number is not None else ""
    return LwmmError(f"model {ref}: the repo has only pickle weights ({pickles[0]}), never loaded unless asked: pass "
                     f"--allow-pickle to load them with torch.load(weights_only=True){pr}")


def _from_cache(ref: ModelRef, *, token: str | bool | None, allow_pickle: bool) -> ResolvedModel:
    """The snapshot of a reference already in the Hugging Face cache (offline)."""
    patterns = [*HUB_ALLOW_PATTERNS, *((*PICKLE_NAMES, "pytorch_model-*.bin") if allow_pickle else ())]
    files = snapshot(ref, [ref.path_in_repo(pattern) for pattern in patterns], token=token, local_files_only=True)
    folder = files / ref.subfolder if ref.subfolder else files
    if not folder.is_dir():
        raise LwmmError(f"model {ref}: subfolder {ref.subfolder!r} holds no config.json or safetensors weights")
    if not any(folder.glob("*.safetensors")) and not (allow_pickle and any((folder / name).is_file() for name in PICKLE_NAMES)):
        raise LwmmError(f"model {ref}: the cached snapshot has no safetensors weights")
    return _checked(ref, folder, commit=files.name if _COMMIT_SHA.match(files.name) else None)


def snapshot(ref: ModelRef, patterns: list[str], *, token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """The one ``snapshot_download`` call: the files of ``ref``'s revision matching ``patterns``, in the cache."""
    from huggingface_hub import snapshot_download

    with _hub_errors(f"model {ref}", ref):
        return Path(snapshot_download(ref.repo, revision=ref.revision, allow_patterns=patterns, token=token,
                                      local_files_only=local_files_only))


@contextmanager
def _hub_errors(what: str, ref: ModelRef) -> Iterator[None]:
    """Every failure of a pull from the Hub as one :class:`LwmmError` line starting with ``what``."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LwmmError:
        raise
    except GatedRepoError:
        raise LwmmError(f"{what}: the repo is gated; accept its terms on the Hub and log in") from None
    except RepositoryNotFoundError:
        raise LwmmError(f"{what}: repository not found (or private: set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise LwmmError(f"{what}: revision {ref.revision!r} not found") from None
    except RemoteEntryNotFoundError:
        raise LwmmError(f"{what}: no such file in the repo" + (f" at {ref.revision}" if ref.revision else "")) from None
    except LocalEntryNotFoundError as err:
        if isinstance(err.__cause__, HfHubHTTPError):  # snapshot_download falls back to the cache on any HTTP error
            raise LwmmError(f"{what}: {describe_hub_error(err.__cause__)}") from None
        raise LwmmError(f"{what}: not in the local Hugging Face cache and the Hub cannot be reached (offline)") from None
    except (httpx2.TransportError, OfflineModeIsEnabled) as err:
        raise HubUnreachableError(f"{what}: the Hub cannot be reached ({err.__class__.__name__})") from None
    except HFValidationError as err:
        raise LwmmError(f"{what}: {str(err).splitlines()[0]}") from None
    except OSError as err:  # HTTP errors (HfHubHTTPError is an OSError) and cache write failures
        raise LwmmError(f"{what}: {describe_hub_error(err)}") from None


def describe_hub_error(err: BaseException) -> str:
    """One line on why a Hub call failed: the HTTP status with the Hub's message or a hint (the token is never shown)."""
    from huggingface_hub.errors import HfHubHTTPError

    cause = err.__cause__ if isinstance(err, RuntimeError) and err.__cause__ is not None else err  # LFS upload wrapper
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        status = cause.response.status_code
        hints = {401: "the token was refused (set HF_TOKEN or run `hf auth login`)",
                 403: "the token has no write access to this namespace",
                 404: "repository or revision not found"}
        server = (cause.server_message or "").strip().splitlines()
        return f"HTTP {status}, " + hints.get(status, server[0] if server else cause.response.reason_phrase)
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{cause.__class__.__name__}: {text[:300] or 'no details'}"


def _checked(ref: ModelRef, folder: Path, *, commit: str | None) -> ResolvedModel:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise LwmmError(f"model {ref}: no {CONFIG_NAME} in {folder}")
    return ResolvedModel(ref=ref, folder=folder, commit=commit, config=_read_config(ref, config_path))


def _read_config(ref: ModelRef, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise LwmmError(f"model {ref}: unreadable {CONFIG_NAME} ({err})") from None
    if not isinstance(config, dict):
        raise LwmmError(f"model {ref}: {CONFIG_NAME} is a JSON {type(config).__name__}, not an object of settings")
    return config
