"""The test Hub behaves like the Hub where the real ``huggingface_hub`` client depends on it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import FileEntry, HubServer, git_object_id, go_offline, hub, tree_id  # noqa: F401  (hub: fixture)
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
from huggingface_hub.utils import get_session, hf_raise_for_status

WEIGHTS = bytes(range(256)) * 4  # binary → stored with LFS
CONFIG = b'{"model_type": "segformer", "architectures": ["SegformerForSemanticSegmentation"]}\n'


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def push(api: HfApi, repo_id: str, folder: Path, message: str) -> str:
    return api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=message).oid


@dataclass(frozen=True)
class VersionedRepo:
    repo_id: str
    v1: str  # commit tagged v1, head of branch dev
    v2: str  # head of main


@pytest.fixture
def versioned_repo(hub: HubServer, tmp_path: Path) -> VersionedRepo:
    """A model repo with v1 (tagged ``v1``, branch ``dev``) and v2 on ``main``."""
    api = HfApi(token=hub.token)
    repo_id = f"{hub.user}/tiny"
    api.create_repo(repo_id)
    v1_files = {"config.json": CONFIG, "model.safetensors": WEIGHTS, "ckpt-1/notes.txt": b"first\n"}
    v1 = push(api, repo_id, write_folder(tmp_path / "v1", v1_files), "v1")
    api.create_tag(repo_id, tag="v1")
    api.create_branch(repo_id, branch="dev", revision=v1)
    v2 = push(api, repo_id, write_folder(tmp_path / "v2", {"model.safetensors": WEIGHTS[::-1], "ckpt-1/notes.txt": b"second\n"}), "v2")
    return VersionedRepo(repo_id, v1, v2)


def test_pushed_files_come_back_at_branch_tag_and_sha(versioned_repo: VersionedRepo, tmp_path: Path) -> None:
    repo_id, v1, v2 = versioned_repo.repo_id, versioned_repo.v1, versioned_repo.v2
    api = HfApi()
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [v2, v1]
    assert api.model_info(repo_id).sha == v2
    assert api.model_info(repo_id, revision="v1").sha == v1
    assert api.model_info(repo_id, revision="dev").sha == v1
    assert api.model_info(repo_id, revision=v1[:7]).sha == v1  # short SHAs resolve, like git
    for revision, weights, notes in [("main", WEIGHTS[::-1], b"second\n"), ("v1", WEIGHTS, b"first\n"),
                                     ("dev", WEIGHTS, b"first\n"), (v1, WEIGHTS, b"first\n"), (v2, WEIGHTS[::-1], b"second\n")]:
        assert Path(hf_hub_download(repo_id, "model.safetensors", revision=revision)).read_bytes() == weights
        assert Path(hf_hub_download(repo_id, "ckpt-1/notes.txt", revision=revision)).read_bytes() == notes
    snapshot = Path(snapshot_download(repo_id, revision="v1", allow_patterns=["ckpt-1/*", "*.json"], cache_dir=tmp_path / "fresh"))
    assert snapshot.name == v1
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == ["ckpt-1/notes.txt", "config.json"]
    assert (snapshot / "config.json").read_bytes() == CONFIG  # v1's config is kept by v2


def test_resolve_headers_follow_the_hub(hub: HubServer, versioned_repo: VersionedRepo) -> None:
    repo_id, v2 = versioned_repo.repo_id, versioned_repo.v2
    session = get_session()
    lfs = session.head(f"{hub.endpoint}/{repo_id}/resolve/main/model.safetensors")
    assert lfs.headers["X-Repo-Commit"] == v2
    assert lfs.headers["ETag"] == f'"{hashlib.sha256(WEIGHTS[::-1]).hexdigest()}"'
    assert int(lfs.headers["Content-Length"]) == len(WEIGHTS)
    small = session.head(f"{hub.endpoint}/{repo_id}/resolve/main/config.json")
    assert small.headers["ETag"] == f'"{git_object_id("blob", CONFIG)}"'
    ranged = session.get(f"{hub.endpoint}/{repo_id}/resolve/main/config.json", headers={"Range": "bytes=2-11"})
    assert (ranged.status_code, ranged.content) == (206, CONFIG[2:12])
    files = {f.path: f for f in HfApi().list_repo_tree(repo_id, recursive=True)}
    assert files["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS[::-1]).hexdigest()
    assert files["config.json"].lfs is None
    assert sorted(f.path for f in HfApi().list_repo_tree(repo_id)) == [".gitattributes", "ckpt-1", "config.json", "model.safetensors"]
    assert [f.path for f in HfApi().list_repo_tree(repo_id, "ckpt-1")] == ["ckpt-1/notes.txt"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command line")
def test_blob_tree_and_lfs_ids_are_the_ones_git_computes(versioned_repo: VersionedRepo, tmp_path: Path) -> None:
    repo_id, v1 = versioned_repo.repo_id, versioned_repo.v1
    git_dir = tmp_path / "git"
    subprocess.run(["git", "init", "-q", str(git_dir)], check=True)

    def git(*args: str, stdin: bytes | None = None) -> str:
        return subprocess.run(["git", "-C", str(git_dir), *args], input=stdin, capture_output=True, check=True).stdout.decode().strip()

    listing = list(HfApi().list_repo_tree(repo_id, recursive=True, revision=v1))
    files = {}
    for entry in (e for e in listing if hasattr(e, "blob_id")):
        content = Path(hf_hub_download(repo_id, entry.path, revision=v1)).read_bytes()
        if entry.lfs is not None:  # git stores the LFS pointer, not the content
            assert entry.lfs.sha256 == hashlib.sha256(content).hexdigest()
            content = f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.lfs.sha256}\nsize {entry.size}\n".encode()
        assert git("hash-object", "-w", "--stdin", stdin=content) == entry.blob_id
        git("update-index", "--add", "--cacheinfo", f"100644,{entry.blob_id},{entry.path}")
        files[entry.path] = FileEntry(entry.path, entry.size, entry.blob_id, entry.lfs.sha256 if entry.lfs else None)
    root = git("write-tree")
    assert tree_id(files) == root
    (folder,) = [e for e in listing if e.path == "ckpt-1"]
    assert folder.tree_id == git("rev-parse", f"{root}:ckpt-1")


def test_unknown_repo_revision_and_file_raise_the_client_errors(versioned_repo: VersionedRepo) -> None:
    repo_id = versioned_repo.repo_id
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(repo_id, revision="v9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        next(iter(HfApi().list_repo_tree(repo_id, revision="f" * 40)))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "pytorch_model.bin")
    with pytest.raises(EntryNotFoundError):
        next(iter(HfApi().list_repo_tree(repo_id, "no-such-folder")))


def test_writes_need_a_valid_write_token_in_the_right_namespace(hub: HubServer) -> None:
    read_token = hub.new_token(hub.user, role="read")
    other_token = hub.add_user("someone-else")
    with pytest.raises(HfHubHTTPError) as missing:
        HfApi(token=False).create_repo(f"{hub.user}/x")
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as invalid:
        HfApi(token="hf_not_a_token").create_repo(f"{hub.user}/x")
    assert invalid.value.response.status_code == 401
    for token in (read_token, other_token):
        with pytest.raises(HfHubHTTPError) as forbidden:
            HfApi(token=token).create_repo(f"{hub.user}/x")
        assert forbidden.value.response.status_code == 403
    api = HfApi(token=hub.token)
    api.create_repo(f"{hub.user}/x")
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo(f"{hub.user}/x")
    assert exists.value.response.status_code == 409
    assert api.create_repo(f"{hub.user}/x", exist_ok=True).repo_id == f"{hub.user}/x"
    with pytest.raises(RepositoryNotFoundError):  # pushing to a repo that is not there
        api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=f"{hub.user}/missing")
    with pytest.raises(HfHubHTTPError) as anonymous_push:
        HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=f"{hub.user}/x")
    assert anonymous_push.value.response.status_code == 401
    assert [f.path for f in api.list_repo_tree(f"{hub.user}/x")] == [".gitattributes"]  # nothing was committed


def test_organisation_members_write_in_its_namespace(hub: HubServer) -> None:
    hub.add_org("uda-lab", members=(hub.user,))
    api = HfApi(token=hub.token)
    api.create_repo("uda-lab/shared", private=True)
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="uda-lab/shared")
    assert Path(hf_hub_download("uda-lab/shared", "a.txt", token=hub.token)).read_bytes() == b"hello"
    assert api.whoami()["orgs"][0]["name"] == "uda-lab"


def test_private_repos_are_hidden_without_access(hub: HubServer) -> None:
    api = HfApi(token=hub.token)
    api.create_repo(f"{hub.user}/secret", private=True)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=f"{hub.user}/secret")
    assert api.model_info(f"{hub.user}/secret").private is True
    stranger = hub.add_user("stranger")
    for token in (False, stranger):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info(f"{hub.user}/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(f"{hub.user}/secret", "config.json", token=token)
    assert Path(hf_hub_download(f"{hub.user}/secret", "config.json", token=hub.token)).read_bytes() == b"{}"


def test_lfs_uploads_are_verified_and_commits_need_uploaded_objects(hub: HubServer) -> None:
    api = HfApi(token=hub.token)
    repo_id = f"{hub.user}/lfs"
    api.create_repo(repo_id)
    announced = UploadInfo.from_bytes(WEIGHTS)
    actions, errors, _ = post_lfs_batch_info(upload_infos=[announced], token=hub.token, repo_type="model",
                                             repo_id=repo_id, revision="main")
    assert errors == [] and "upload" in actions[0]["actions"]
    href = actions[0]["actions"]["upload"]["href"]
    tampered = get_session().put(href, content=WEIGHTS[:-1] + b"\x00")
    assert tampered.status_code == 400 and "sha256" in tampered.json()["error"]
    with pytest.raises(BadRequestError):  # the pointer refers to content the Hub never received
        hub_commit_lfs_pointer(api, repo_id, announced)
    assert get_session().put(href, content=WEIGHTS).status_code == 200
    hub_commit_lfs_pointer(api, repo_id, announced)
    assert Path(hf_hub_download(repo_id, "w.safetensors")).read_bytes() == WEIGHTS
    again, _, _ = post_lfs_batch_info(upload_infos=[announced], token=hub.token, repo_type="model", repo_id=repo_id)
    assert "actions" not in again[0]  # already stored: nothing to upload


def hub_commit_lfs_pointer(api: HfApi, repo_id: str, info: UploadInfo) -> None:
    """Commit an LFS pointer line directly, without uploading (what a broken client could send)."""
    lines = [{"key": "header", "value": {"summary": "pointer", "description": ""}},
             {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": info.sha256.hex(), "size": info.size}}]
    response = get_session().post(f"{api.endpoint}/api/models/{repo_id}/commit/main",
                                  content=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
                                  headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/x-ndjson"})
    hf_raise_for_status(response)


def test_commit_operations_and_their_preconditions(hub: HubServer, versioned_repo: VersionedRepo) -> None:
    repo_id, v1 = versioned_repo.repo_id, versioned_repo.v1
    api = HfApi(token=hub.token)
    deleted = api.create_commit(repo_id, [CommitOperationDelete("ckpt-1/")], commit_message="drop checkpoint")
    assert "ckpt-1/notes.txt" not in api.list_repo_files(repo_id)
    with pytest.raises(EntryNotFoundError):
        api.create_commit(repo_id, [CommitOperationDelete("ckpt-1/notes.txt")], commit_message="again")
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="stale", parent_commit=v1)
    assert stale.value.response.status_code == 412
    with pytest.raises(BadRequestError):  # commits go to branches, not tags
        api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="on tag", revision="v1")
    on_dev = api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="dev only", revision="dev")
    assert api.list_repo_commits(repo_id, revision="dev")[1].commit_id == v1
    assert api.model_info(repo_id).sha == deleted.oid != on_dev.oid
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"]
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_branch(repo_id, branch="dev")
    assert exists.value.response.status_code == 409
    api.create_branch(repo_id, branch="dev", exist_ok=True)


def test_card_metadata_is_validated_before_the_upload(hub: HubServer) -> None:
    api = HfApi(token=hub.token)
    repo_id = f"{hub.user}/carded"
    api.create_repo(repo_id)
    bad = b"---\nbase_model:\n- /tmp/local/folder\nbase_model_relation: merge\n---\n# card\n"
    with pytest.raises(ValueError, match="not a valid model id"):
        api.upload_file(path_or_fileobj=bad, path_in_repo="README.md", repo_id=repo_id)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nbase_model: [unclosed\n---\n", path_in_repo="README.md", repo_id=repo_id)
    good = b"---\nbase_model:\n- org/a\n- org/b\nbase_model_relation: merge\ntags: [merge]\n---\n# card\n"
    api.upload_file(path_or_fileobj=good, path_in_repo="README.md", repo_id=repo_id)
    info = api.model_info(repo_id)
    assert info.card_data["base_model"] == ["org/a", "org/b"] and info.tags == ["merge"]


def test_fail_next_answers_500_and_the_client_retries_where_it_does(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = f"{hub.user}/flaky"
    api.create_repo(repo_id)
    hub.fail_next(1)
    with pytest.raises(HfHubHTTPError) as failed:  # model_info does not retry
        api.model_info(repo_id)
    assert failed.value.response.status_code == 500
    assert api.model_info(repo_id).id == repo_id  # the switch is spent
    hub.fail_next(1, matching=r"^PUT /_lfs_upload/")
    push(api, repo_id, write_folder(tmp_path / "w", {"model.safetensors": WEIGHTS}), "weights")
    assert [r.status for r in hub.requests_to(r"^PUT /_lfs_upload/")] == [500, 200]  # http_backoff retried
    assert Path(hf_hub_download(repo_id, "model.safetensors")).read_bytes() == WEIGHTS
    assert not hub.internal_errors


def test_offline_mode_serves_the_warm_cache_only(hub: HubServer, versioned_repo: VersionedRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_id = versioned_repo.repo_id
    warm = snapshot_download(repo_id, revision="v1")
    go_offline(monkeypatch)
    served = len(hub.requests)
    assert snapshot_download(repo_id, revision="v1") == warm
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(repo_id, revision="dev")
    assert len(hub.requests) == served  # nothing reached the server


def test_collections_roundtrip(hub: HubServer) -> None:
    api = HfApi(token=hub.token)
    api.create_repo(f"{hub.user}/merged")
    created = api.create_collection("UDA merges", description="merged SegFormers")
    assert created.slug.startswith(f"{hub.user}/uda-merges-") and created.owner["name"] == hub.user
    api.add_collection_item(created.slug, f"{hub.user}/merged", "model", note="layerwise merge of a, b")
    with pytest.raises(HfHubHTTPError) as duplicate:
        api.add_collection_item(created.slug, f"{hub.user}/merged", "model")
    assert duplicate.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as missing_item:
        api.add_collection_item(created.slug, f"{hub.user}/not-there", "model")
    assert missing_item.value.response.status_code == 404
    fetched = HfApi().get_collection(created.slug)
    assert [(i.item_id, i.item_type, i.note) for i in fetched.items] == [(f"{hub.user}/merged", "model", "layerwise merge of a, b")]
    assert api.create_collection("UDA merges", exists_ok=True).slug == created.slug
    assert [c.slug for c in HfApi().list_collections(owner=hub.user)] == [created.slug]
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(token=False).create_collection("x", namespace=hub.user)
    assert anonymous.value.response.status_code == 401


def test_pull_requests_resolve_everywhere_and_are_listed_like_discussions(hub: HubServer, versioned_repo: VersionedRepo,
                                                                           tmp_path: Path) -> None:
    repo_id = versioned_repo.repo_id
    contributor = HfApi(token=hub.add_user("contributor"))  # no write access: PRs are open to anyone signed in
    with pytest.raises(HfHubHTTPError):
        contributor.upload_file(path_or_fileobj=b"x", path_in_repo="notes.txt", repo_id=repo_id)
    opened = [contributor.create_commit(repo_id, [CommitOperationAdd(f"pr-{n}.bin", WEIGHTS[n:])], commit_message=f"PR {n}",
                                        create_pr=True) for n in range(3)]
    assert [info.pr_revision for info in opened] == ["refs/pr/1", "refs/pr/2", "refs/pr/3"]
    api = HfApi()
    assert api.model_info(repo_id).sha == versioned_repo.v2  # main did not move
    info = api.model_info(repo_id, revision="refs/pr/2", files_metadata=True)
    assert info.sha == opened[1].oid and "pr-1.bin" in [s.rfilename for s in info.siblings]
    assert [c.commit_id for c in api.list_repo_commits(repo_id, revision="refs/pr/2")][:2] == [opened[1].oid, versioned_repo.v2]
    assert "pr-1.bin" in [entry.path for entry in api.list_repo_tree(repo_id, revision="refs/pr/2")]
    assert Path(hf_hub_download(repo_id, "pr-1.bin", revision="refs/pr/2")).read_bytes() == WEIGHTS[1:]
    assert [ref.ref for ref in api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests] == [f"refs/pr/{n}" for n in (1, 2, 3)]

    hub.state.repos[("model", repo_id)].pulls[2].status = "closed"
    hub.app.discussions_page_size = 1
    listed = list(api.get_repo_discussions(repo_id))
    assert [(d.num, d.title, d.status, d.author, d.is_pull_request, d.git_reference) for d in listed] == [
        (3, "PR 2", "open", "contributor", True, "refs/pr/3"), (2, "PR 1", "closed", "contributor", True, "refs/pr/2"),
        (1, "PR 0", "open", "contributor", True, "refs/pr/1")]
    assert len(hub.requests_to(rf"^GET /api/models/{repo_id}/discussions$")) == 3  # one page each
    assert [d.num for d in api.get_repo_discussions(repo_id, discussion_status="open", author="contributor")] == [3, 1]
    assert not list(api.get_repo_discussions(repo_id, author="someone-else"))
    details = api.get_discussion_details(repo_id, 3)
    assert (details.title, details.git_reference, details.events[0].type) == ("PR 2", "refs/pr/3", "commit")


def test_range_requests_and_the_weight_byte_counter(hub: HubServer, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    api = HfApi(token=hub.token)
    repo_id = f"{hub.user}/counted"
    api.create_repo(repo_id)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "model.safetensors")
    content = (tmp_path / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(content[:8], "little")
    api.upload_file(path_or_fileobj=content, path_in_repo="model.safetensors", repo_id=repo_id)
    url = f"{hub.endpoint}/{repo_id}/resolve/main/model.safetensors"
    ranged = get_session().get(url, headers={"Range": f"bytes=8-{header - 1}"})
    assert ranged.status_code == 206 and ranged.headers["Content-Range"] == f"bytes 8-{header - 1}/{len(content)}"
    assert ranged.content == content[8:header] and hub.weight_bytes_served == 0  # a header is not weights
    assert get_session().get(url, headers={"Range": f"bytes={header - 4}-{header + 9}"}).status_code == 206
    assert hub.weight_bytes_served == 10
    assert get_session().get(url, headers={"Range": f"bytes={len(content)}-"}).status_code == 416
    hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path / "cache")
    assert hub.weight_bytes_served == 10 + len(content) - header
