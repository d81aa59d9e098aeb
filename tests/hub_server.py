"""A small Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it on 127.0.0.1.

No Hub is reachable from the test machines and no self-hosted Hub exists on PyPI, so this module speaks
the part of the Hub's HTTP protocol that ``huggingface_hub`` (2.x, with ``HF_HUB_DISABLE_XET=1``) and
``transformers`` use, and keeps it honest: what is pushed is stored and served back.

* repos (model, dataset) with git-like commits: blob, tree and commit ids are real git sha1s
  (LFS files are stored as git-lfs pointers, as on the Hub), branches, tags, full or short commit SHAs;
* ``api/{models,datasets}/{repo}[/revision/{rev}]``, ``tree/{rev}[/{path}]`` (``recursive``), ``refs``,
  ``commits/{rev}``; HEAD/GET ``{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob
  sha1, or sha256 for LFS files), ``Content-Length`` and byte ranges;
* ``api/repos/create`` (409 when it exists), ``api/repos/delete``, ``preupload``, the LFS batch API with
  a basic-transfer PUT that verifies size and sha256, the NDJSON ``commit`` endpoint (``file``,
  ``lfsFile``, ``deletedFile``, ``deletedFolder``; ``parentCommit``), ``branch`` and ``tag`` creation
  and deletion;
* pull requests: a commit with ``create_pr=1`` (by any signed-in user, as on the Hub) opens PR ``N`` at
  ``refs/pr/N`` on top of its branch; ``refs/pr/N`` resolves everywhere a revision does; discussions are
  listed (``api/models/{repo}/discussions``: the Hub's JSON shape, filters, pages of
  ``discussions_page_size``, newest first) and fetched one by one;
* ``weight_bytes_served``: how many tensor-data bytes the server sent (safetensors data sections and
  whole pickle files; safetensors headers do not count), so tests can tell a header read from a download;
* ``api/whoami-v2``, ``api/validate-yaml`` (YAML, ``base_model``, ``base_model_relation`` and ``model-index`` checks);
* collections: create (409 on a duplicate title), get, list by owner, add an item with a note;
* auth: 401 without a valid token on writes and on private repos, 403 outside the token's namespaces
  or with a read token; 404s carry the ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``) that ``hf_raise_for_status`` turns into the matching exception classes;
* ``fail_next(n)``: the next ``n`` requests (optionally only those matching a pattern) answer 500.

Pointing the client at it: ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, and the test
session has imported it long before a fixture runs. :func:`point_client_at` therefore sets the
environment variables (for subprocesses) *and* patches the constants the client reads at call time
(``constants.ENDPOINT``, the resolve-URL template, the cache and token paths, the offline and Xet
switches) and the endpoint of the module-level ``HfApi`` behind ``huggingface_hub.create_repo`` & co.
Everything is undone by ``monkeypatch`` at the end of the test.

Use in a test module::

    from hub_server import HubServer, hub  # noqa: F401  (hub: the fixture)

    def test_push(hub: HubServer, monkeypatch):
        monkeypatch.setenv("HF_TOKEN", hub.token)      # no token is configured by default
        hub.add_org("uda-lab", members=(hub.user,))    # more accounts: add_user(), new_token(role="read")
        hub.fail_next(1, matching=r"^PUT /_lfs_upload/")  # next LFS upload answers 500
        ...                                             # hub.requests records (method, path, status)

Limits: repo ids are always ``namespace/name``; PRs cannot be merged, commented on or closed over HTTP
(tests call ``Repo.pulls``); no spaces, Xet, multipart LFS or pagination outside discussions; ``validate-yaml``
checks only YAML syntax, ``base_model``, ``base_model_relation`` and the required fields of ``model-index``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

DEFAULT_USER = "lwmm-tester"
MAIN = "main"
LFS_THRESHOLD = 10 * 1024 * 1024
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz",
                ".pkl", ".png", ".jpg", ".jpeg", ".gif", ".zip", ".gz", ".tar", ".parquet", ".arrow")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
_REPO_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
_REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")


# ----------------------------------------------------------------------------------------------- git objects


def git_object_id(kind: str, body: bytes) -> str:
    """The sha1 git gives an object: ``sha1(b"<kind> <len>\\0" + body)``."""
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def object_id() -> str:
    """A 24-hex id like the Hub's database ids."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class FileEntry:
    """A file of a commit: its git blob id and, for LFS files, the sha256 of the real content."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id

    def tree_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs_sha256 is not None:
            pointer_size = len(lfs_pointer(self.lfs_sha256, self.size))
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": pointer_size}
        return entry


def tree_id(files: dict[str, FileEntry], prefix: str = "") -> str:
    """The git tree id of the folder ``prefix`` (``""``: the root) of a flat path → file map."""
    children: dict[str, tuple[str, str]] = {}  # name → (mode, object id)
    for path, entry in files.items():
        if not path.startswith(prefix):
            continue
        name, slash, _ = path[len(prefix):].partition("/")
        if slash:
            children.setdefault(name, ("40000", ""))
        else:
            children[name] = ("100644", entry.blob_id)
    body = b""
    for name in sorted(children, key=lambda n: n + "/" if children[n][0] == "40000" else n):  # git's order
        mode, oid = children[name]
        oid = oid or tree_id(files, f"{prefix}{name}/")
        body += f"{mode} {name}\0".encode() + bytes.fromhex(oid)
    return git_object_id("tree", body)


def folders_of(files: dict[str, FileEntry]) -> set[str]:
    """Every folder that holds a file, at any depth (git has no empty folders)."""
    return {"/".join(parts[:depth]) for parts in (path.split("/") for path in files) for depth in range(1, len(parts))}


@dataclass
class Commit:
    oid: str
    files: dict[str, FileEntry]
    parents: tuple[str, ...]
    title: str
    message: str
    author: str
    date: str


def make_commit(files: dict[str, FileEntry], *, parents: tuple[str, ...], title: str, message: str, author: str) -> Commit:
    """A commit whose id is the sha1 git would compute for the same tree, parents, author and message."""
    date = now_iso()
    stamp = int(datetime.now(timezone.utc).timestamp())
    lines = [f"tree {tree_id(files)}", *(f"parent {parent}" for parent in parents),
             f"author {author} <{author}@users.noreply.test> {stamp} +0000",
             f"committer {author} <{author}@users.noreply.test> {stamp} +0000", "", title]
    if message:
        lines += ["", message]
    oid = git_object_id("commit", ("\n".join(lines) + "\n").encode())
    return Commit(oid, dict(files), parents, title, message, author, date)


# ----------------------------------------------------------------------------------------------- hub state


class HubError(Exception):
    """An HTTP error answer, shaped the way the Hub shapes it."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.body = {"error": message, **(body or {})}


@dataclass
class Account:
    name: str
    kind: str  # "user" or "org"
    orgs: list[str] = field(default_factory=list)


@dataclass
class Token:
    user: str
    role: str  # "read" or "write"


@dataclass
class PullRequest:
    num: int
    title: str
    author: str
    head: str  # commit id of refs/pr/{num}
    status: str = "open"  # open, closed, merged, draft
    created_at: str = field(default_factory=now_iso)

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=now_iso)
    object_id: str = field(default_factory=object_id)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    pulls: dict[int, PullRequest] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def url_path(self) -> str:
        return URL_PREFIX[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> str:
        """Branch, tag, full commit SHA or an unambiguous SHA prefix (7+ hex digits) → commit id."""
        revision = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        pull = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pull and int(pull.group(1)) in self.pulls:
            return self.pulls[int(pull.group(1))].head
        if _HEX.match(revision):
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def history(self, commit_id: str) -> Iterator[Commit]:
        """First-parent history, newest first."""
        while True:
            commit = self.commits[commit_id]
            yield commit
            if not commit.parents:
                return
            commit_id = commit.parents[0]


@dataclass
class CollectionItem:
    item_id: str
    item_type: str
    note: str | None
    object_id: str = field(default_factory=object_id)


@dataclass
class Collection:
    slug: str
    title: str
    owner: str
    private: bool
    description: str | None
    items: list[CollectionItem] = field(default_factory=list)
    last_updated: str = field(default_factory=now_iso)


@dataclass
class HubState:
    """Everything the Hub stores; every method runs under ``lock``."""

    accounts: dict[str, Account] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # git blob id → content (regular files)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 → content
    upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = field(default_factory=dict)
    collections: dict[str, Collection] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- accounts
    def add_account(self, name: str, *, kind: str, orgs: tuple[str, ...] = ()) -> Account:
        if name in self.accounts:
            raise ValueError(f"account {name!r} exists")
        for org in orgs:
            self.accounts.setdefault(org, Account(org, "org"))
        self.accounts[name] = account = Account(name, kind, list(orgs))
        return account

    def new_token(self, user: str, *, role: str) -> str:
        token = f"hf_{secrets.token_urlsafe(24)}"
        self.tokens[token] = Token(user, role)
        return token

    def caller(self, authorization: str | None) -> Token | None:
        """The token's owner; an unknown token is a 401 (as on the Hub), a missing one is anonymous."""
        if not authorization:
            return None
        token = self.tokens.get(authorization.removeprefix("Bearer ").strip())
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header",
                           headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return token

    def namespaces_of(self, caller: Token | None) -> set[str]:
        if caller is None:
            return set()
        return {caller.user, *self.accounts[caller.user].orgs}

    def require_writer(self, caller: Token | None, namespace: str) -> Token:
        if caller is None:
            raise HubError(401, "You must be authenticated to access this resource")
        if caller.role != "write":
            raise HubError(403, "This token does not have write access")
        if namespace not in self.namespaces_of(caller):
            raise HubError(403, f"You don't have the rights to write in the namespace {namespace!r}")
        return caller

    # -- repos
    def repo(self, repo_type: str, repo_id: str, caller: Token | None, *, write: bool = False) -> Repo:
        """A repo the caller may read (or write); a private repo is hidden like a missing one."""
        repo = self.repos.get((repo_type, repo_id))
        readable = repo is not None and (not repo.private or repo.namespace in self.namespaces_of(caller))
        if not readable:
            status = 401 if caller is None else 404
            raise HubError(status, "Repository not found", code="RepoNotFound")
        assert repo is not None
        if write:
            self.require_writer(caller, repo.namespace)
        return repo

    def create_repo(self, caller: Token | None, payload: dict[str, Any], endpoint: str) -> dict[str, Any]:
        if caller is None:
            raise HubError(401, "You must be authenticated to access this resource")
        name = str(payload.get("name", ""))
        namespace = payload.get("organization") or caller.user
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Unsupported repo type {repo_type!r} on this test Hub")
        if not _REPO_NAME.match(name) or "--" in name or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name {name!r}")
        self.require_writer(caller, namespace)
        repo_id = f"{namespace}/{name}"
        url = f"{endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        repo = Repo(repo_type, repo_id, private)
        content = GITATTRIBUTES.encode()
        entry = self.store_regular(".gitattributes", content)
        initial = make_commit({entry.path: entry}, parents=(), title="initial commit", message="", author=caller.user)
        repo.commits[initial.oid] = initial
        repo.branches[MAIN] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": repo.object_id}

    def delete_repo(self, caller: Token | None, payload: dict[str, Any]) -> None:
        repo_id = f"{payload.get('organization') or (caller.user if caller else '')}/{payload.get('name')}"
        repo = self.repo(payload.get("type") or "model", repo_id, caller, write=True)
        del self.repos[(repo.repo_type, repo.repo_id)]

    def store_regular(self, path: str, content: bytes) -> FileEntry:
        blob_id = git_object_id("blob", content)
        self.blobs[blob_id] = content
        return FileEntry(path, len(content), blob_id)

    def content_of(self, entry: FileEntry) -> bytes:
        return self.lfs_objects[entry.lfs_sha256] if entry.lfs_sha256 else self.blobs[entry.blob_id]

    # -- collections
    def collection(self, slug: str, caller: Token | None) -> Collection:
        collection = self.collections.get(slug)
        if collection is None or (collection.private and collection.owner not in self.namespaces_of(caller)):
            raise HubError(404, f"Collection {slug} not found")
        return collection


def collection_json(collection: Collection, state: HubState, *, max_items: int | None = None) -> dict[str, Any]:
    owner = state.accounts[collection.owner]
    items = [
        {"_id": item.object_id, "id": item.item_id, "type": item.item_type, "position": position,
         **({"note": {"text": item.note, "html": item.note}} if item.note else {})}
        for position, item in enumerate(collection.items)
    ]
    return {
        "slug": collection.slug, "title": collection.title, "description": collection.description,
        "owner": {"name": owner.name, "type": owner.kind, "fullname": owner.name, "avatarUrl": ""},
        "items": items[:max_items], "lastUpdated": collection.last_updated, "position": 0,
        "private": collection.private, "theme": "indigo", "upvotes": 0, "isUpvotedByUser": False, "gating": False,
    }


def weight_data_start(path: str, content: bytes) -> int:
    """Where a file's tensor data starts: after a safetensors header, at 0 for pickles, never for other files."""
    if path.endswith(".safetensors") and len(content) >= 8:
        return 8 + int.from_bytes(content[:8], "little")
    return 0 if path.endswith(WEIGHT_SUFFIXES) else len(content)


def card_metadata(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a README (``None`` when there is none); raises ``yaml.YAMLError``."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    return yaml.safe_load(match.group(1)) or {}


def metadata_errors(metadata: Any) -> list[str]:
    """What the Hub's metadata validation would refuse (the subset the project relies on)."""
    if not isinstance(metadata, dict):
        return ["YAML metadata must be a mapping"]
    errors = []
    base_models = metadata.get("base_model") or []
    for base_model in base_models if isinstance(base_models, list) else [base_models]:
        if not isinstance(base_model, str) or not _REPO_ID.match(base_model):
            errors.append(f'"base_model" must be a list of model ids; {base_model!r} is not a valid model id')
    relation = metadata.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)}')
    if "model-index" in metadata:
        errors += model_index_errors(metadata["model-index"])
    return errors


def model_index_errors(model_index: Any) -> list[str]:
    """The ``model-index`` spec (hub-docs ``modelcard.md``): each result names ``task.type``, ``dataset.type``
    and ``dataset.name``, and its metrics a ``type`` and a ``value``; the optional fields, when given, are strings."""
    if not isinstance(model_index, list):
        return ['"model-index" must be a list']
    errors = []
    for i, entry in enumerate(model_index):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append(f'"{where}.name" is required and must be a string')
            continue
        results = entry.get("results")
        if not isinstance(results, list):
            errors.append(f'"{where}.results" must be a list')
            continue
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            task, dataset = (result.get("task"), result.get("dataset")) if isinstance(result, dict) else (None, None)
            metrics = result.get("metrics") if isinstance(result, dict) else None
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f'"{at}.task.type" is required and must be a string')
            if not isinstance(dataset, dict):
                errors.append(f'"{at}.dataset" is required')
            else:
                errors += [f'"{at}.dataset.{key}" is required and must be a string' for key in ("type", "name")
                           if not isinstance(dataset.get(key), str)]
                errors += [f'"{at}.dataset.{key}" must be a string' for key in ("config", "split", "revision")
                           if key in dataset and not isinstance(dataset[key], str)]
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{at}.metrics" must be a non-empty list')
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or metric.get("value") is None:
                    errors.append(f'"{at}.metrics[{k}]" needs a "type" (string) and a "value"')
    return errors


# ----------------------------------------------------------------------------------------------- HTTP layer


@dataclass
class Request:
    method: str
    path: str  # still URL-quoted, without the query
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    caller: Token | None
    endpoint: str

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError:
            raise HubError(400, "Body is not valid JSON") from None

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int


Handler = Callable[["HubApp", Request, re.Match], Response]
_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = rf"/api/(?P<kind>models|datasets)/{_REPO}"
_GIT_REPO = rf"/(?:(?P<kind>datasets)/)?{_REPO}\.git/info/lfs/objects"


class HubApp:
    """The Hub's routes over a :class:`HubState` (no sockets here: see :class:`HubServer`)."""

    routes: list[tuple[str, re.Pattern, str]] = [
        ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
        ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
        ("POST", re.compile(r"/api/repos/create"), "create_repo"),
        ("POST", re.compile(r"/api/repos/delete"), "delete_repo"),
        ("GET", re.compile(rf"{_API_REPO}(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
        ("GET", re.compile(rf"{_API_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "tree"),
        ("GET", re.compile(rf"{_API_REPO}/refs"), "refs"),
        ("GET", re.compile(rf"{_API_REPO}/discussions"), "discussions"),
        ("GET", re.compile(rf"{_API_REPO}/discussions/(?P<num>\d+)"), "discussion"),
        ("GET", re.compile(rf"{_API_REPO}/commits/(?P<rev>[^/]+)"), "commits"),
        ("POST", re.compile(rf"{_API_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
        ("POST", re.compile(rf"{_API_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
        ("POST", re.compile(rf"{_API_REPO}/branch/(?P<branch>[^/]+)"), "create_branch"),
        ("DELETE", re.compile(rf"{_API_REPO}/branch/(?P<branch>[^/]+)"), "delete_branch"),
        ("POST", re.compile(rf"{_API_REPO}/tag/(?P<rev>[^/]+)"), "create_tag"),
        ("DELETE", re.compile(rf"{_API_REPO}/tag/(?P<tag>[^/]+)"), "delete_tag"),
        ("POST", re.compile(rf"{_GIT_REPO}/batch"), "lfs_batch"),
        ("POST", re.compile(rf"{_GIT_REPO}/verify"), "lfs_verify"),
        ("PUT", re.compile(r"/_lfs_upload/(?P<ticket>[\w-]+)"), "lfs_upload"),
        ("GET", re.compile(r"/api/collections"), "list_collections"),
        ("POST", re.compile(r"/api/collections"), "create_collection"),
        ("GET", re.compile(r"/api/collections/(?P<slug>[^/]+/[^/]+)"), "get_collection"),
        ("POST", re.compile(r"/api/collections/(?P<slug>[^/]+/[^/]+)/items"), "add_collection_item"),
        ("GET", re.compile(rf"/(?:(?P<kind>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
        ("HEAD", re.compile(rf"/(?:(?P<kind>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
    ]

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.discussions_page_size = 50  # the Hub's page size
        self.weight_bytes_served = 0

    def dispatch(self, request: Request) -> Response:
        for method, pattern, name in self.routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                return getattr(self, name)(request, match)
        raise HubError(404, f"Sorry, we can't find the page you are looking for ({request.method} {request.path})")

    # -- helpers
    def _repo(self, request: Request, match: re.Match, *, write: bool = False) -> Repo:
        kind = REPO_TYPES[match.group("kind") or "models"]
        repo_id = f"{unquote(match.group('ns'))}/{unquote(match.group('name'))}"
        return self.state.repo(kind, repo_id, request.caller, write=write)

    def _commit(self, repo: Repo, match: re.Match) -> Commit:
        return repo.commits[repo.resolve(unquote(match.group("rev")))]

    def _branch(self, repo: Repo, match: re.Match) -> str:
        """The branch a write goes to; commits land on branches only."""
        revision = unquote(match.group("rev")).removeprefix("refs/heads/")
        if revision not in repo.branches:
            repo.resolve(revision)  # 404 RevisionNotFound when it is nothing at all
            raise HubError(400, f"Revision {revision!r} is not a branch: commits go to branches")
        return revision

    # -- account routes
    def whoami(self, request: Request, match: re.Match) -> Response:
        if request.caller is None:
            raise HubError(401, "Invalid credentials in Authorization header",
                           headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        account = self.state.accounts[request.caller.user]
        return Response.of_json({
            "type": "user", "id": account.name, "name": account.name, "fullname": account.name,
            "email": f"{account.name}@users.noreply.test", "emailVerified": True, "isPro": False,
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in account.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": request.caller.role}},
        })

    def validate_yaml(self, request: Request, match: re.Match) -> Response:
        content = str(request.json().get("content", ""))
        try:
            metadata = card_metadata(content)
        except yaml.YAMLError as err:
            return Response.of_json({"errors": [{"message": f"Invalid YAML in metadata: {err}"}]}, 400)
        if metadata is None:
            return Response.of_json({"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        errors = metadata_errors(metadata)
        if errors:
            return Response.of_json({"errors": [{"message": message} for message in errors]}, 400)
        return Response.of_json({"warnings": []})

    # -- repo routes
    def create_repo(self, request: Request, match: re.Match) -> Response:
        return Response.of_json(self.state.create_repo(request.caller, request.json(), request.endpoint))

    def delete_repo(self, request: Request, match: re.Match) -> Response:
        self.state.delete_repo(request.caller, request.json())
        return Response.of_json({})

    def repo_info(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        commit = repo.commits[repo.resolve(unquote(match.group("rev") or MAIN))]
        siblings = []
        for entry in sorted(commit.files.values(), key=lambda e: e.path):
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if request.flag("blobs"):
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs_sha256:
                    sibling["lfs"] = {"sha256": entry.lfs_sha256, "size": entry.size,
                                      "pointerSize": len(lfs_pointer(entry.lfs_sha256, entry.size))}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.object_id, "id": repo.repo_id, "author": repo.namespace, "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        metadata = self._card_metadata(commit)
        if isinstance(metadata, dict):
            info["cardData"] = metadata
            info["tags"] = list(metadata.get("tags") or [])
            for key in ("library_name", "pipeline_tag"):
                if key in metadata:
                    info[key] = metadata[key]
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            config = commit.files.get("config.json")
            if config is not None:
                parsed = json.loads(self.state.content_of(config))
                info["config"] = {key: parsed[key] for key in ("architectures", "model_type") if key in parsed}
        return Response.of_json(info)

    def _card_metadata(self, commit: Commit) -> dict[str, Any] | None:
        readme = commit.files.get("README.md")
        try:
            return card_metadata(self.state.content_of(readme).decode(errors="replace")) if readme else None
        except yaml.YAMLError:
            return None

    def tree(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        commit = self._commit(repo, match)
        folder = unquote(match.group("path") or "").strip("/")
        prefix = f"{folder}/" if folder else ""
        if folder and folder not in folders_of(commit.files):
            raise HubError(404, f"{folder} does not exist on {match.group('rev')}", code="EntryNotFound")
        recursive = request.flag("recursive")

        def listed(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

        entries = [{"type": "directory", "oid": tree_id(commit.files, f"{path}/"), "size": 0, "path": path}
                   for path in sorted(folders_of(commit.files)) if listed(path)]
        entries += [entry.tree_json() for path, entry in sorted(commit.files.items()) if listed(path)]
        return Response.of_json(entries)

    def refs(self, request: Request, match: re.Match) -> Response:
        """Branches, tags and converts; pull requests only with ``include_prs``, as the Hub lists them."""
        repo = self._repo(request, match)
        listing: dict[str, Any] = {
            "branches": [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.branches.items()],
            "converts": [],
            "tags": [{"name": name, "ref": f"refs/tags/{name}", "targetCommit": oid} for name, oid in repo.tags.items()],
        }
        if request.flag("include_prs"):
            listing["pullRequests"] = [{"name": pull.ref, "ref": pull.ref, "targetCommit": pull.head} for pull in repo.pulls.values()]
        return Response.of_json(listing)

    def discussions(self, request: Request, match: re.Match) -> Response:
        """A page of the repo's discussions (all of them pull requests here), newest first, as the Hub lists them."""
        repo = self._repo(request, match)
        kind, status = request.query.get("type", ["all"])[-1], request.query.get("status", ["all"])[-1]
        authors = request.query.get("author")
        found = [pull for pull in sorted(repo.pulls.values(), key=lambda p: -p.num)
                 if kind in ("all", "pull_request") and status in ("all", pull.status) and (not authors or pull.author in authors)]
        size = self.discussions_page_size
        start = int(request.query.get("p", ["0"])[-1]) * size
        return Response.of_json({"discussions": [self._discussion_json(repo, pull) for pull in found[start:start + size]],
                                 "count": len(found), "start": start,
                                 "numClosedDiscussions": sum(pull.status != "open" for pull in repo.pulls.values())})

    def discussion(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        pull = repo.pulls.get(int(match.group("num")))
        if pull is None:
            raise HubError(404, "Discussion not found")
        commit = repo.commits[pull.head]
        events = [{"id": object_id(), "type": "commit", "createdAt": commit.date, "author": self._author_json(pull.author),
                   "data": {"subject": commit.title, "oid": commit.oid}}]
        return Response.of_json({**self._discussion_json(repo, pull), "events": events, "conflictingFiles": [],
                                 "filesWithConflicts": [], "changes": {"base": f"refs/heads/{MAIN}"},
                                 "diffUrl": f"{request.endpoint}/{repo.url_path}/discussions/{pull.num}/files"})

    def _author_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "type": "user", "fullname": name, "avatarUrl": "", "isPro": False}

    def _discussion_json(self, repo: Repo, pull: PullRequest) -> dict[str, Any]:
        return {"num": pull.num, "title": pull.title, "status": pull.status, "createdAt": pull.created_at,
                "isPullRequest": True, "author": self._author_json(pull.author), "pinned": False, "numComments": 1,
                "topReactions": [], "numReactionUsers": 0, "repo": {"name": repo.repo_id, "type": repo.repo_type}}

    def commits(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        commit = self._commit(repo, match)
        return Response.of_json([
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in repo.history(commit.oid)
        ])

    def create_branch(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match, write=True)
        branch = unquote(match.group("branch"))
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        start = request.json().get("startingPoint") or MAIN
        repo.branches[branch] = repo.resolve(start)
        return Response.of_json({})

    def delete_branch(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match, write=True)
        branch = unquote(match.group("branch"))
        if branch == MAIN:
            raise HubError(403, "The main branch cannot be deleted")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Branch {branch} not found", code="RevisionNotFound")
        return Response.of_json({})

    def create_tag(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match, write=True)
        commit = self._commit(repo, match)
        tag = str(request.json().get("tag", ""))
        if not tag or tag in repo.tags:
            raise HubError(409 if tag else 400, f"Tag {tag!r} already exists" if tag else "Missing tag name")
        repo.tags[tag] = commit.oid
        return Response.of_json({})

    def delete_tag(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match, write=True)
        if repo.tags.pop(unquote(match.group("tag")), None) is None:
            raise HubError(404, "Tag not found", code="RevisionNotFound")
        return Response.of_json({})

    # -- upload routes
    def preupload(self, request: Request, match: re.Match) -> Response:
        repo = self._contributed(request, match)
        head = repo.commits[repo.branches[self._branch(repo, match)]]
        answers = []
        for item in request.json().get("files", []):
            path, size = str(item["path"]), int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            is_lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD or b"\0" in sample
            existing = head.files.get(path)
            answers.append({"path": path, "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False,
                            "oid": existing.etag if existing else None})
        return Response.of_json({"files": answers, "commitOid": head.oid})

    def lfs_batch(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)  # anyone signed in may upload for a pull request
        if request.caller is None:
            raise HubError(401, "You must be authenticated to access this resource")
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported by this test Hub")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only the basic LFS transfer is supported by this test Hub")
        objects = []
        for item in payload.get("objects", []):
            oid, size = str(item["oid"]), int(item["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_oids:
                ticket = secrets.token_urlsafe(16)
                self.state.upload_tickets[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
                answer["actions"] = {
                    "upload": {"href": f"{request.endpoint}/_lfs_upload/{ticket}", "header": {}},
                    "verify": {"href": f"{request.endpoint}/{repo.url_path}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(answer)
        return Response.of_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                                headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, request: Request, match: re.Match) -> Response:
        """The signed upload URL (no Authorization header, like an S3 URL): size and sha256 are checked."""
        ticket = self.state.upload_tickets.get(match.group("ticket"))
        if ticket is None:
            raise HubError(403, "Upload URL is invalid or expired")
        repo_key, oid, size = ticket
        digest = hashlib.sha256(request.body).hexdigest()
        if len(request.body) != size or digest != oid:
            raise HubError(400, f"Uploaded content does not match the announced object: sha256 {digest}, "
                                f"{len(request.body)} bytes (expected {oid}, {size} bytes)")
        self.state.lfs_objects[oid] = request.body
        self.state.repos[repo_key].lfs_oids.add(oid)
        del self.state.upload_tickets[match.group("ticket")]
        return Response(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        payload = request.json()
        oid = str(payload.get("oid"))
        if oid not in repo.lfs_oids or len(self.state.lfs_objects[oid]) != int(payload.get("size", -1)):
            raise HubError(404, f"LFS object {oid} was not uploaded")
        return Response.of_json({"success": True})

    def _contributed(self, request: Request, match: re.Match) -> Repo:
        """The repo of a write: a pull request needs any signed-in user, a commit to a branch a writer."""
        repo = self._repo(request, match, write=not request.flag("create_pr"))
        if request.caller is None:
            raise HubError(401, "You must be authenticated to access this resource")
        return repo

    def commit(self, request: Request, match: re.Match) -> Response:
        repo = self._contributed(request, match)
        branch = self._branch(repo, match)
        parent = repo.commits[repo.branches[branch]]
        lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and repo.resolve(header["parentCommit"]) != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            self._apply(repo, files, line.get("key"), line.get("value") or {})
        commit = make_commit(files, parents=(parent.oid,), title=str(header.get("summary") or "Update"),
                             message=str(header.get("description") or ""), author=request.caller.user)
        repo.commits[commit.oid] = commit
        pull_url = None
        if request.flag("create_pr"):
            num = max(repo.pulls, default=0) + 1
            repo.pulls[num] = PullRequest(num, commit.title, request.caller.user, commit.oid)
            pull_url = f"{request.endpoint}/{repo.url_path}/discussions/{num}"
        else:
            repo.branches[branch] = commit.oid
        return Response.of_json({"success": True, "commitOid": commit.oid, "hookOutput": "", "pullRequestUrl": pull_url,
                                 "commitUrl": f"{request.endpoint}/{repo.url_path}/commit/{commit.oid}"})

    def _apply(self, repo: Repo, files: dict[str, FileEntry], key: str | None, value: dict[str, Any]) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise HubError(400, f"Invalid path {path!r}")
        if key == "file":
            content = base64.b64decode(value.get("content", "")) if value.get("encoding") == "base64" else str(value.get("content", "")).encode()
            if b"\0" in content[:8000] or len(content) >= LFS_THRESHOLD:
                raise HubError(400, f"Your push was rejected because {path} is a binary or large file: use LFS")
            files[path] = self.state.store_regular(path, content)
        elif key == "lfsFile":
            oid = str(value.get("oid"))
            if oid not in repo.lfs_oids:
                raise HubError(400, f"Your push was rejected because an LFS pointer ({path}) points to a file that was not uploaded")
            size = len(self.state.lfs_objects[oid])
            files[path] = FileEntry(path, size, git_object_id("blob", lfs_pointer(oid, size)), oid)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
        elif key == "deletedFolder":
            for name in [name for name in files if name.startswith(f"{path}/")]:
                del files[name]
        else:
            raise HubError(400, f"Unsupported commit operation {key!r}")

    # -- downloads
    def resolve(self, request: Request, match: re.Match) -> Response:
        repo = self._repo(request, match)
        commit = self._commit(repo, match)
        path = unquote(match.group("path"))
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        content = self.state.content_of(entry)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status, body = 200, content
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2) or len(content) - 1), len(content) - 1)
            if start >= len(content):
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            status, body = 206, content[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        if request.method == "GET":
            served = range(start, end + 1) if ranged else range(len(content))
            self.weight_bytes_served += len(range(max(served.start, weight_data_start(path, content)), served.stop))
        return Response(status, body, headers)

    # -- collections
    def list_collections(self, request: Request, match: re.Match) -> Response:
        owners = set(request.query.get("owner", []))
        found = [c for c in self.state.collections.values()
                 if (not owners or c.owner in owners) and (not c.private or c.owner in self.state.namespaces_of(request.caller))]
        # listings truncate items to 4 and carry no "position" (the client numbers them itself)
        listed = [{k: v for k, v in collection_json(c, self.state, max_items=4).items() if k != "position"} for c in found]
        return Response.of_json(listed)

    def create_collection(self, request: Request, match: re.Match) -> Response:
        payload = request.json()
        title = str(payload.get("title", "")).strip()
        namespace = str(payload.get("namespace") or (request.caller.user if request.caller else ""))
        self.state.require_writer(request.caller, namespace)
        if not title:
            raise HubError(400, "A collection needs a title")
        for existing in self.state.collections.values():
            if existing.owner == namespace and existing.title == title:
                raise HubError(409, "Collection already exists", body={"slug": existing.slug})
        slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-') or 'collection'}-{object_id()}"
        collection = Collection(slug, title, namespace, bool(payload.get("private")), payload.get("description"))
        self.state.collections[slug] = collection
        return Response.of_json(collection_json(collection, self.state))

    def get_collection(self, request: Request, match: re.Match) -> Response:
        return Response.of_json(collection_json(self.state.collection(unquote(match.group("slug")), request.caller), self.state))

    def add_collection_item(self, request: Request, match: re.Match) -> Response:
        collection = self.state.collection(unquote(match.group("slug")), request.caller)
        self.state.require_writer(request.caller, collection.owner)
        payload = request.json()
        item = payload.get("item") or {}
        item_id, item_type = str(item.get("id")), str(item.get("type"))
        if item_type not in URL_PREFIX:
            raise HubError(400, f"Unsupported item type {item_type!r} on this test Hub")
        self.state.repo(item_type, item_id, request.caller)  # 401/404 when it does not exist
        if any(existing.item_id == item_id and existing.item_type == item_type for existing in collection.items):
            raise HubError(409, "Item already in the collection")
        collection.items.append(CollectionItem(item_id, item_type, payload.get("note")))
        collection.last_updated = now_iso()
        return Response.of_json(collection_json(collection, self.state))


# ----------------------------------------------------------------------------------------------- server


@dataclass
class FaultSwitch:
    """Fail the next ``remaining`` requests whose ``METHOD path`` matches ``pattern`` with HTTP 500."""

    remaining: int = 0
    pattern: re.Pattern | None = None

    def trips(self, method: str, path: str) -> bool:
        if self.remaining <= 0 or (self.pattern is not None and not self.pattern.search(f"{method} {path}")):
            return False
        self.remaining -= 1
        return True


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self, method: str) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        hub: HubServer = self.server.hub
        with hub.state.lock:
            if hub.faults.trips(method, url.path):
                response = Response.of_json({"error": "Internal Error - injected by the test Hub's fail_next()"}, 500)
            else:
                response = self._answer(hub, method, url.path, parse_qs(url.query), body)
            hub.requests.append(RequestRecord(method, url.path, response.status))
        self.send_response(response.status)
        for name, value in {"Content-Length": str(len(response.body)), **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def _answer(self, hub: "HubServer", method: str, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            caller = hub.state.caller(self.headers.get("Authorization"))
            request = Request(method, path, query, self.headers, body, caller, hub.endpoint)
            return hub.app.dispatch(request)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            return Response.of_json(err.body, err.status, headers)
        except Exception as err:  # a bug of the test Hub itself: answer (the client must not hang) and record it
            hub.internal_errors.append(f"{method} {path}: {err.__class__.__name__}: {err}")
            return Response.of_json({"error": f"test Hub bug: {err.__class__.__name__}: {err}"}, 500)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """The test Hub on ``127.0.0.1``: ``endpoint``, a write ``token`` of ``user``, ``fail_next``, accounts.

    Use it as a context manager (or through the ``hub`` fixture) so the server thread stops at the end.
    """

    def __init__(self, *, user: str = DEFAULT_USER) -> None:
        self.state = HubState()
        self.app = HubApp(self.state)
        self.faults = FaultSwitch()
        self.requests: list[RequestRecord] = []
        self.internal_errors: list[str] = []
        self.user = user
        self.token = self.add_user(user)
        self._http = _HTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._http.hub = self
        self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-hub", daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def add_user(self, name: str, *, orgs: tuple[str, ...] = (), role: str = "write") -> str:
        """Create a user (and its organisations, when new); returns a token with ``role`` (read/write)."""
        with self.state.lock:
            self.state.add_account(name, kind="user", orgs=orgs)
            return self.state.new_token(name, role=role)

    def add_org(self, name: str, *, members: tuple[str, ...] = ()) -> None:
        """Create an organisation whose members may write in its namespace."""
        with self.state.lock:
            self.state.add_account(name, kind="org")
            for member in members:
                self.state.accounts[member].orgs.append(name)

    def new_token(self, user: str, *, role: str = "write") -> str:
        with self.state.lock:
            return self.state.new_token(user, role=role)

    def fail_next(self, count: int, *, matching: str | None = None) -> None:
        """Answer the next ``count`` requests (only those whose ``METHOD /path`` matches the regex) with 500."""
        with self.state.lock:
            self.faults = FaultSwitch(count, re.compile(matching) if matching else None)

    @property
    def weight_bytes_served(self) -> int:
        """Tensor-data bytes sent so far (see :func:`weight_data_start`)."""
        with self.state.lock:
            return self.app.weight_bytes_served

    def url(self, repo_id: str, *, repo_type: str = "model") -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"

    def requests_to(self, pattern: str) -> list[RequestRecord]:
        """The recorded requests whose ``METHOD /path`` matches the regex ``pattern``."""
        return [record for record in self.requests if re.search(pattern, f"{record.method} {record.path}")]


def point_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Make the (already imported) ``huggingface_hub`` and any subprocess use ``endpoint`` and a cache in ``home``.

    No token is configured: tests pass ``token=`` or set ``HF_TOKEN`` themselves.
    """
    from huggingface_hub import constants, hf_api

    cache = home / "hub"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_TOKEN_PATH": str(home / "token")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    patches: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
        "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HF_HUB_OFFLINE=1`` for this process (the flag is read at import, so the constant is patched too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh test Hub, with ``huggingface_hub`` pointed at it and an empty cache in ``tmp_path/hf_home``."""
    with HubServer() as server:
        point_client_at(monkeypatch, server.endpoint, tmp_path / "hf_home")
        yield server


@pytest.fixture
def hub_server(hub: HubServer) -> HubServer:
    """Alias of :func:`hub`."""
    return hub
