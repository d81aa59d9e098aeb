"""Model references: a local folder, or a Hub repo ``org/name[@revision][:subfolder]``.

``:`` separates the subfolder because git forbids it in ref names and the Hub forbids it in repo ids,
so ``org/name@refs/pr/1:checkpoint-4000`` is unambiguous.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_lwmm.errors import LwmmError

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: Files fetched from the Hub: never pickles, never code.
HUB_ALLOW_PATTERNS = (CONFIG_NAME, PREPROCESSOR_NAME, "*.safetensors", SAFETENSORS_INDEX_NAME)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


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
        spec, _, subfolder = text.partition(":")
        repo_id, _, revision = spec.partition("@")
        if not _REPO_ID.match(repo_id):
            raise LwmmError(f"model reference {text!r}: not an existing folder nor a Hub repo id 'org/name[@revision][:subfolder]'")
        return cls(repo_id=repo_id, revision=revision or None, subfolder=subfolder.strip("/") or None)

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


@dataclass(frozen=True)
class ResolvedModel:
    """A reference resolved to a folder on disk holding ``config.json`` and weights."""

    ref: ModelRef
    folder: Path
    commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_labels(self) -> int | None:
        id2label = self.config.get("id2label")
        return len(id2label) if isinstance(id2label, dict) else self.config.get("num_labels")

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def resolve(ref: ModelRef | str, *, token: str | bool | None = None, local_files_only: bool | None = None) -> ResolvedModel:
    """Find the folder of a reference, downloading it from the Hub (or its cache) when it is a repo id."""
    if isinstance(ref, str):
        ref = ModelRef.parse(ref)
    if ref.is_local:
        assert ref.path is not None
        if not ref.path.is_dir():
            raise LwmmError(f"model {ref}: no such folder")
        return _checked(ref, ref.path, commit=None)
    snapshot = _download(ref, token=token, local_files_only=local_files_only)
    folder = snapshot / ref.subfolder if ref.subfolder else snapshot
    if not folder.is_dir():
        raise LwmmError(f"model {ref}: subfolder {ref.subfolder!r} holds no config.json or safetensors weights")
    commit = snapshot.name if _COMMIT_SHA.match(snapshot.name) else None
    if not any(folder.glob("*.safetensors")):
        raise _missing_weights_error(ref, commit, token=token, may_list=not local_files_only)
    return _checked(ref, folder, commit=commit)


def is_repo_id(text: str) -> bool:
    """``namespace/name`` as the Hub spells repo ids (no revision, no subfolder)."""
    return bool(_REPO_ID.match(text))


def _missing_weights_error(ref: ModelRef, commit: str | None, *, token: str | bool | None, may_list: bool) -> LwmmError:
    """Why a snapshot has no safetensors: the repo's file list tells whether it only has pickle weights."""
    from huggingface_hub import HfApi

    assert ref.repo_id is not None
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    files: list[str] = []
    if may_list:
        try:
            files = HfApi().list_repo_files(ref.repo_id, revision=commit or ref.revision, token=token)
        except Exception:  # offline or unreachable: report what the snapshot shows
            pass
    pickles = [name for name in files if name.startswith(prefix) and "/" not in name[len(prefix):]
               and name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        return LwmmError(f"model {ref}: the repo has only pickle weights ({pickles[0]}), which are never downloaded; "
                         "convert them to safetensors (from_pretrained + save_pretrained, then push) and merge that revision")
    where = f" under {ref.subfolder}/" if ref.subfolder else ""
    return LwmmError(f"model {ref}: the repo has no safetensors weights{where}")


def _download(ref: ModelRef, *, token: str | bool | None, local_files_only: bool | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert ref.repo_id is not None
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    patterns = [prefix + pattern for pattern in HUB_ALLOW_PATTERNS]
    try:
        return Path(
            snapshot_download(
                ref.repo_id,
                revision=ref.revision,
                allow_patterns=patterns,
                token=token,
                local_files_only=bool(local_files_only),  # HF_HUB_OFFLINE=1 also forces the cache
            )
        )
    except GatedRepoError:
        raise LwmmError(f"model {ref}: the repo is gated; accept its terms on the Hub and log in") from None
    except RepositoryNotFoundError:
        raise LwmmError(f"model {ref}: repository not found (or private: set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise LwmmError(f"model {ref}: revision {ref.revision!r} not found") from None
    except LocalEntryNotFoundError:
        raise LwmmError(f"model {ref}: not in the local Hugging Face cache and the Hub cannot be reached (offline)") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise LwmmError(f"model {ref}: the Hub answered HTTP {status}") from None
    except OSError as err:
        raise LwmmError(f"model {ref}: download failed ({err.__class__.__name__})") from None


def _checked(ref: ModelRef, folder: Path, *, commit: str | None) -> ResolvedModel:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise LwmmError(f"model {ref}: no {CONFIG_NAME} in {folder}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise LwmmError(f"model {ref}: unreadable {CONFIG_NAME} ({err})") from None
    if not isinstance(config, dict):
        raise LwmmError(f"model {ref}: {CONFIG_NAME} is a JSON {type(config).__name__}, not an object of settings")
    return ResolvedModel(ref=ref, folder=folder, commit=commit, config=config)
