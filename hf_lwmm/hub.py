"""Push a merged folder to the Hub in one commit, file it in a collection, and reproduce a merge from its recipe.

Pulling sources lives in :mod:`hf_lwmm.refs`. Every Hub failure becomes one :class:`LwmmError` line; a
failed push never touches the local output and names the ``lwmm-hub push`` command that retries it.
Tokens come from ``HF_TOKEN`` or the stored login and are never written anywhere.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hf_lwmm.card import CARD_NAME, local_sources, published_files
from hf_lwmm.errors import LwmmError
from hf_lwmm.io import sha256_of, weights_sha256
from hf_lwmm.recipe import RECIPE_NAME, MergeRecipe, RunOptions, pinned_source, read_recipe_document, recipe_of_document
from hf_lwmm.refs import CONFIG_NAME, HUB_ALLOW_PATTERNS, ModelRef, describe_hub_error, is_repo_id, snapshot

#: The record ``lwmm-hub convert`` writes beside a converted model (source, its sha256, what was left out).
CONVERSION_NAME = "lwmm_conversion.yaml"
#: What a push uploads from a merged or converted folder: weights, configs, card, record and plot — nothing else.
PUSH_PATTERNS = ("*.safetensors", "model.safetensors.index.json", CONFIG_NAME, "preprocessor_config.json",
                 "README.md", RECIPE_NAME, CONVERSION_NAME, "*.png")
MAIN_BRANCH = "main"
_NAMESPACE = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_COLLECTION_SLUG = re.compile(r"^[\w.-]+/[\w.-]+-[0-9a-f]{24}$")
_MAX_NOTE = 500  # the Hub's limit on a collection item's note


@dataclass(frozen=True)
class PushOptions:
    """How to push: visibility of a new repo, target branch, commit message, collection to file it in."""

    private: bool = False
    revision: str | None = None
    #: create ``revision`` from main when it is not a branch yet (otherwise a missing branch is an error)
    create_branch: bool = False
    commit_message: str | None = None
    collection: str | None = None

    def retry_command(self, folder: Path, repo_id: str) -> str:
        """The ``lwmm-hub push`` command that retries this push of ``folder``."""
        words = ["lwmm-hub", "push", str(folder), repo_id]
        if self.private:
            words.append("--private")
        if self.revision:
            words += ["--revision", self.revision]
        if self.create_branch:
            words.append("--create-branch")
        if self.commit_message:
            words += ["--commit-message", self.commit_message]
        if self.collection:
            words += ["--collection", self.collection]
        return shlex.join(words)


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    files: list[str]
    changed: bool = True
    collection_slug: str | None = None

    def summary(self) -> str:
        if self.changed:
            lines = [f"pushed {len(self.files)} files to {self.repo_id}@{self.revision} in commit {self.commit}"]
        else:
            lines = [f"{self.repo_id}@{self.revision} is already up to date with these {len(self.files)} files (commit {self.commit})"]
        lines.append(f"  {self.commit_url}")
        if self.collection_slug:
            lines.append(f"  added to collection {self.collection_slug}")
        return "\n".join(lines)


def require_token(token: str | None = None) -> str:
    """The token a push will use (``HF_TOKEN`` or the stored login); checked before any long work."""
    found = token or get_token()
    if not found:
        raise LwmmError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`")
    return found


def files_to_push(folder: Path) -> list[str]:
    """The files of a merged (or converted) folder that belong in the repo; refuses any other folder."""
    if not folder.is_dir():
        raise LwmmError(f"{folder}: no such folder")
    names = sorted(path.name for path in folder.iterdir()
                   if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in PUSH_PATTERNS))
    record = CONVERSION_NAME if CONVERSION_NAME in names else RECIPE_NAME
    missing = [name for name in (CONFIG_NAME, record) if name not in names]
    if missing or not any(name.endswith(".safetensors") for name in names):
        what = missing[0] if missing else "safetensors weights"
        raise LwmmError(f"{folder}: not a merged model folder (no {what}); run `lwmm-hub merge … --output {folder}` first")
    return names


def collection_note(document: dict[str, Any]) -> str:
    """The note of a collection item: method and sources (each at its resolved commit, anchor marked)."""
    sources = [pinned_source(record, short=True) + (" (anchor)" if record.get("role") == "anchor" else "")
               for record in document["sources"]]
    note = f"{document['recipe'].get('method', 'lwmm')} merge of {', '.join(sources)} — lwmm-hub"
    return note if len(note) <= _MAX_NOTE else note[: _MAX_NOTE - 1] + "…"


def default_commit_message(document: dict[str, Any]) -> str:
    count = len(document["sources"])
    return f"Add {document['recipe'].get('method', 'lwmm')} merge of {count} models (lwmm-hub)"


def warn_local_sources(document: dict[str, Any], repo_id: str) -> None:
    """One line on stderr when the merge used local folders: the card names them, but the Hub cannot replay it."""
    local = local_sources(document)
    if local:
        print(f"warning: {repo_id}: {len(local)} source(s) are local folders ({', '.join(local)}): the card records their "
              "names and weights sha256, but the merge cannot be reproduced from the Hub; push the sources first "
              "(lwmm-hub merge … --push-to-hub REPO --push-sources ORG does)", file=sys.stderr)


def push_local_sources(recipe: MergeRecipe, org: str, *, token: str | None = None) -> MergeRecipe:
    """Push each local source folder as ``org/<folder name>`` (config, preprocessor, safetensors weights; one commit
    each) and return the recipe merging those Hub repos, pinned at the commits just made, so the card records them."""
    if not _NAMESPACE.match(org):
        raise LwmmError(f"--push-sources {org!r}: expected a Hub user or organization name")
    api = HfApi(token=require_token(token))
    models = list(recipe.models)
    for index, ref in enumerate(recipe.refs):
        if not ref.is_local:
            continue
        assert ref.path is not None
        folder = ref.path.expanduser().resolve()
        if not any(folder.glob("*.safetensors")):
            raise LwmmError(f"--push-sources: {ref}: no safetensors weights to push")
        repo_id = f"{org}/{folder.name}"
        try:
            api.create_repo(repo_id, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=list(HUB_ALLOW_PATTERNS),
                                       commit_message=f"Add {folder.name} (source of an lwmm-hub merge)")
        except Exception as err:  # any transfer failure ends the same way
            raise LwmmError(f"--push-sources: pushing {ref} to {repo_id} failed: {describe_hub_error(err)}") from err
        models[index] = f"{repo_id}@{commit.oid}"
    anchor = None if recipe.anchor is None else models[recipe.anchor_index]
    return recipe.replace(models=models, anchor=anchor)


def check_repo_id(repo_id: str) -> None:
    """Refuse, before any work, a target that is not a Hub repo id ``namespace/name``."""
    if not is_repo_id(repo_id):
        raise LwmmError(f"repo {repo_id!r}: expected a Hub repo id 'namespace/name' (use --revision for a branch)")


def verify_weights(folder: Path, names: list[str], document: dict[str, Any]) -> None:
    """Every weights file matches the sha256 the merge recorded in the recipe (and the card shows)."""
    recorded = document.get("weights_sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise LwmmError(f"{folder}: {RECIPE_NAME} records no weights_sha256; merge again to push a verifiable folder")
    weights = [name for name in names if name.endswith(".safetensors")]
    if sorted(weights) != sorted(recorded):
        extra = sorted(set(weights) ^ set(recorded))[0]
        raise LwmmError(f"{folder}: {extra} is {'not recorded in' if extra in weights else 'missing but recorded in'} "
                        f"{RECIPE_NAME}; the folder was changed after the merge")
    card = (folder / CARD_NAME).read_text(errors="replace") if (folder / CARD_NAME).is_file() else ""
    for name in weights:
        if sha256_of(folder / name) != recorded[name]:
            raise LwmmError(f"{folder / name}: its sha256 differs from the one recorded in {RECIPE_NAME}; the weights were "
                            "changed after the merge (merge again, or restore them)")
        if card and recorded[name] not in card:
            raise LwmmError(f"{folder / CARD_NAME}: does not record the sha256 of {name}; the card was changed after the merge")


def _target_branch(api: HfApi, repo_id: str, options: PushOptions) -> tuple[str, bool]:
    """The branch to commit to and whether it must be created; refuses a tag and a missing branch not asked for."""
    revision = (options.revision or MAIN_BRANCH).removeprefix("refs/heads/")
    try:
        refs = api.list_repo_refs(repo_id)
        branches, tags = {ref.name for ref in refs.branches}, {ref.name for ref in refs.tags}
    except RepositoryNotFoundError:
        branches, tags = {MAIN_BRANCH}, set()  # a new repo starts with main only
    if revision in tags or revision.startswith("refs/"):
        raise LwmmError(f"--revision {revision}: is {'a tag' if revision in tags else 'a ref'} of {repo_id}, not a branch; commits go to "
                        "branches (choose another name)")
    if revision in branches:
        return revision, False
    if not options.create_branch:
        raise LwmmError(f"--revision {revision}: {repo_id} has no such branch (pass --create-branch to create it from main)")
    return revision, True


def check_push_target(repo_id: str, options: PushOptions = PushOptions(), *, token: str | None = None) -> None:
    """Before any long work (``merge --push-to-hub``): the repo id, the token, and the target branch."""
    check_repo_id(repo_id)
    api = HfApi(token=require_token(token))
    try:
        _target_branch(api, repo_id, options)
    except LwmmError:
        raise
    except Exception as err:  # HTTP or network failure: one line
        raise LwmmError(f"push to {repo_id}: {describe_hub_error(err)}") from err


def push_folder(folder: Path, repo_id: str, options: PushOptions = PushOptions(), *, token: str | None = None) -> PushResult:
    """Create the repo if needed and upload the merged folder in one commit; optionally file it in a collection.

    The weights are first checked against the sha256 the merge recorded; nothing is uploaded otherwise.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    names = files_to_push(folder)
    document, message, description, note = _push_texts(folder, names)
    verify_weights(folder, names, document)
    api = HfApi(token=require_token(token))
    retry = options.retry_command(folder, repo_id)
    try:
        revision, new_branch = _target_branch(api, repo_id, options)
    except LwmmError:
        raise
    except Exception as err:
        raise LwmmError(f"push to {repo_id} failed: {describe_hub_error(err)}. The merged model is intact in {folder}; "
                        f"retry with: {retry}") from err
    try:
        api.create_repo(repo_id, private=options.private, exist_ok=True)
        if new_branch:
            api.create_branch(repo_id, branch=revision)
        head = api.repo_info(repo_id, revision=revision).sha
        published = published_files(folder, repo_id)  # the card titled for repo_id, no local paths
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=published.get(name, folder / name)) for name in names]
        commit = api.create_commit(repo_id, operations, commit_message=options.commit_message or message,
                                   commit_description=description, revision=revision)
    except Exception as err:  # any transfer failure (HTTP, network, card validation) ends the same way
        raise LwmmError(f"push to {repo_id} failed: {describe_hub_error(err)}. The merged model is intact in {folder}; "
                        f"retry with: {retry}") from err
    warn_local_sources(document, repo_id)  # once pushed: a refused push says only why
    slug = None
    if options.collection:
        try:
            slug = add_to_collection(api, options.collection, repo_id, note=note)
        except LwmmError as err:
            raise LwmmError(f"{err}. The model is pushed ({commit.oid[:10]}); retry with: {retry}") from err
    return PushResult(repo_id, revision, commit.oid, commit.commit_url, names, changed=commit.oid != head, collection_slug=slug)


def _push_texts(folder: Path, names: list[str]) -> tuple[dict[str, Any], str, str, str]:
    """The record of a merged or a converted folder, and its commit title, commit description and collection note."""
    if CONVERSION_NAME not in names:
        document = read_recipe_document(folder / RECIPE_NAME, written_by_merge=True)
        return document, default_commit_message(document), _commit_description(document), collection_note(document)
    try:
        record = yaml.safe_load((folder / CONVERSION_NAME).read_text())
        source, digest = str(record["source"]), str(record["sha256"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise LwmmError(f"{folder / CONVERSION_NAME}: unreadable conversion record ({err.__class__.__name__})") from None
    note = f"converted from {source} — lwmm-hub"
    return (record, f"Add SegFormer converted from {source.rsplit('/', 1)[-1]} (lwmm-hub)",
            f"Converted with lwmm-hub from {source} (sha256 {digest}).", note if len(note) <= _MAX_NOTE else note[: _MAX_NOTE - 1] + "…")


def add_to_collection(api: HfApi, collection: str, repo_id: str, *, note: str) -> str:
    """Add ``repo_id`` to a collection given by slug, ``namespace/Title`` or title (created when missing)."""
    try:
        slug = _find_or_create_collection(api, collection)
        api.add_collection_item(slug, repo_id, "model", note=note, exists_ok=True)
    except LwmmError:
        raise
    except Exception as err:  # HTTP or network failure: one line
        raise LwmmError(f"--collection {collection}: {describe_hub_error(err)}") from err
    return slug


def _find_or_create_collection(api: HfApi, collection: str) -> str:
    if _COLLECTION_SLUG.match(collection):
        try:
            return api.get_collection(collection).slug
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                raise LwmmError(f"--collection {collection}: no such collection (give a title to create one)") from None
            raise
    namespace, _, title = collection.rpartition("/")
    namespace = namespace or api.whoami()["name"]
    wanted = _slug_word(title)
    for existing in api.list_collections(owner=namespace):
        if existing.title == title or existing.slug.rsplit("-", 1)[0] == f"{namespace}/{wanted}":
            return existing.slug
    return api.create_collection(title, namespace=namespace, exists_ok=True).slug


def _slug_word(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _commit_description(document: dict[str, Any]) -> str:
    lines = ["Merged with lwmm-hub. Sources (at their resolved commits):"]
    lines += [f"- {source['ref']} @ {source.get('commit') or 'local folder'} ({source.get('role', 'source')})"
              for source in document["sources"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- reproduce


@dataclass(frozen=True)
class SourceCheck:
    """A source of the merge: how it was pinned, and its weights' sha256 as recorded and as pulled now."""

    ref: str
    commit: str | None
    recorded: dict[str, str] | None
    current: dict[str, str]

    @property
    def changed(self) -> bool:
        return self.recorded is not None and self.recorded != self.current

    def describe(self) -> str:
        where = f"@ {self.commit}" if self.commit else "local folder: no commit to pin, used as it is now"
        if self.recorded is None:
            return f"  {self.ref}  ({where}; its sha256 was not recorded)"
        if not self.changed:
            return f"  {self.ref}  ({where}; weights unchanged)"
        lines = [f"  {self.ref}  ({where}; CHANGED since the merge)"]
        for name in sorted(set(self.recorded) | set(self.current)):
            recorded, current = self.recorded.get(name, "—"), self.current.get(name, "—")
            if recorded != current:
                lines.append(f"    {name}: recorded {recorded[:16]}, now {current[:16]}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Reproduction:
    """Published vs reproduced sha256 of each weights file, and each source's recorded vs current sha256."""

    target: str
    sources: list[SourceCheck]
    published: dict[str, str]
    reproduced: dict[str, str]

    @property
    def matches(self) -> bool:
        return bool(self.published) and self.published == self.reproduced

    def table(self) -> str:
        """One row per weights file: the first 16 hex digits of each sha256 and the verdict."""
        names = sorted(set(self.published) | set(self.reproduced))
        width = max([len("file"), *map(len, names)])
        rows = [("file", "published", "reproduced", "result"), ("-" * width, "-" * 16, "-" * 16, "-" * 8)]
        for name in names:
            published, reproduced = self.published.get(name, "—"), self.reproduced.get(name, "—")
            rows.append((name, published[:16], reproduced[:16], "match" if published == reproduced else "MISMATCH"))
        return "\n".join(f"{name:<{width}}  {published:<16}  {reproduced:<16}  {verdict}" for name, published, reproduced, verdict in rows)

    def summary(self) -> str:
        header = [f"reproduced {self.target} from {len(self.sources)} sources, Hub ones pinned at their recorded commits:"]
        header += [source.describe() for source in self.sources]
        if self.matches:
            verdict = ["match: the weights are bit-identical"]
        else:
            changed = [source.ref for source in self.sources if source.changed]
            verdict = ["MISMATCH: the weights differ from the published ones"
                       + (f" ({', '.join(changed)} changed since the merge)" if changed else "")]
        return "\n".join([*header, self.table(), *verdict])


def reproduce(target: str, *, token: str | bool | None = None, progress: bool = True) -> Reproduction:
    """Merge again from the recipe of a merged repo (``org/name[@revision][:subfolder]``) or folder and compare."""
    from hf_lwmm.merge import merge

    folder = fetch_merged(target, token=token)
    document = read_recipe_document(folder / RECIPE_NAME, written_by_merge=True)
    recipe = recipe_of_document(document, source=f"{target}: {RECIPE_NAME}")
    published = {path.name: sha256_of(path) for path in sorted(folder.glob("*.safetensors"))}
    with tempfile.TemporaryDirectory(prefix="lwmm-reproduce-") as scratch:
        result = merge(recipe, Path(scratch) / "merged", RunOptions(token=token, progress=progress))
    checks = [SourceCheck(str(record["ref"]), record.get("commit"), record.get("weights_sha256"), weights_sha256(model.folder))
              for record, model in zip(document["sources"], result.models)]
    return Reproduction(target, checks, published, dict(result.sha256))


def fetch_merged(target: str, *, token: str | bool | None = None) -> Path:
    """A local folder holding the recipe and weights of a merge: ``target`` itself, or its Hub snapshot."""
    ref = ModelRef.parse(target)
    if ref.is_local:
        assert ref.path is not None
        if not (ref.path / RECIPE_NAME).is_file():
            raise LwmmError(f"{target}: no {RECIPE_NAME} (not a folder written by lwmm-hub merge)")
        return ref.path
    files = snapshot(ref, [ref.path_in_repo(RECIPE_NAME), ref.path_in_repo("*.safetensors")], token=token)
    folder = files / ref.subfolder if ref.subfolder else files
    if not (folder / RECIPE_NAME).is_file():
        raise LwmmError(f"{target}: the repo has no {RECIPE_NAME} (was it pushed by lwmm-hub?)")
    return folder
