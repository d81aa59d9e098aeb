"""Hub round trip against the test Hub: pull by repo id, revision and subfolder; push in one commit;
collections; ``from_pretrained`` through the endpoint; ``reproduce``; bad input and faults."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForSemanticSegmentation

from helpers import make_tiny_segformer
from hf_lwmm.recipe import RunOptions
from hf_lwmm.cli import main
from hf_lwmm.hub import sha256_of
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe
from hub_server import HubServer, go_offline, hub  # noqa: F401  (hub: fixture)

QUIET = RunOptions(progress=False)

ORG = "uda-lab"
PUSHED_FILES = [".gitattributes", "README.md", "config.json", "lwmm_recipe.yaml", "lwmm_weights.png",
                "model.safetensors", "preprocessor_config.json"]


@dataclass
class Sources:
    """Three source repos on the test Hub, the references that pick them, and local copies of the same weights."""

    refs: list[str]
    repo_ids: list[str]
    commits: list[str]  # the commit each reference must resolve to
    local: list[Path]  # folders with exactly the weights each reference must pull


def upload(api: HfApi, repo_id: str, folder: Path, message: str, *, path_in_repo: str | None = None) -> str:
    return api.upload_folder(folder_path=folder, repo_id=repo_id, path_in_repo=path_in_repo, commit_message=message).oid


@pytest.fixture
def sources(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sources:
    """``uda-mic`` (main), ``uda-hrda@v2`` (a tag behind main) and ``uda-daformer@<short sha>:checkpoint-4000``."""
    hub.add_org(ORG, members=(hub.user,))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    api = HfApi()
    models = tmp_path / "models"
    mic, hrda_old, hrda_v2, hrda_new, daf_2000, daf_4000 = (
        make_tiny_segformer(models / name, seed=seed)
        for seed, name in enumerate(["mic", "hrda-old", "hrda-v2", "hrda-new", "daf-2000", "daf-4000"]))
    for name in ("uda-mic", "uda-hrda", "uda-daformer"):
        api.create_repo(f"{ORG}/{name}")
    mic_commit = upload(api, f"{ORG}/uda-mic", mic, "mic")
    upload(api, f"{ORG}/uda-hrda", hrda_old, "hrda before v2")
    hrda_commit = upload(api, f"{ORG}/uda-hrda", hrda_v2, "hrda v2")
    api.create_tag(f"{ORG}/uda-hrda", tag="v2")
    upload(api, f"{ORG}/uda-hrda", hrda_new, "hrda after v2")
    upload(api, f"{ORG}/uda-daformer", daf_2000, "checkpoint 2000", path_in_repo="checkpoint-2000")
    daf_commit = upload(api, f"{ORG}/uda-daformer", daf_4000, "checkpoint 4000", path_in_repo="checkpoint-4000")
    upload(api, f"{ORG}/uda-daformer", daf_2000, "later checkpoint", path_in_repo="checkpoint-4000")  # main moves on
    return Sources(
        refs=[f"{ORG}/uda-mic", f"{ORG}/uda-hrda@v2", f"{ORG}/uda-daformer@{daf_commit[:7]}:checkpoint-4000"],
        repo_ids=[f"{ORG}/uda-mic", f"{ORG}/uda-hrda", f"{ORG}/uda-daformer"],
        commits=[mic_commit, hrda_commit, daf_commit],
        local=[mic, hrda_v2, daf_4000],
    )


def lwmm(*argv: str | Path) -> int:
    return main([str(arg) for arg in argv])


def weights_of(folder_or_repo: str | Path) -> dict[str, torch.Tensor]:
    return AutoModelForSemanticSegmentation.from_pretrained(folder_or_repo).state_dict()


def test_merge_pulls_revisions_and_subfolders_then_pushes_one_commit(hub: HubServer, sources: Sources, tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture) -> None:
    repo_id = f"{hub.user}/mic-hrda-daf-lwmm"
    output = tmp_path / "merged"
    assert lwmm("merge", *sources.refs, "--output", output, "--push-to-hub", repo_id, "--collection", f"{hub.user}/UDA merges") == 0
    log = capfd.readouterr()
    assert hub.token not in log.out + log.err

    # the right bits were pulled: a merge of local copies of the expected revisions is bit-identical
    expected = merge(MergeRecipe(models=[str(p) for p in sources.local]), tmp_path / "expected", QUIET)
    assert {name: sha256_of(output / name) for name in expected.sha256} == expected.sha256

    api = HfApi()
    commits = api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["Add layerwise merge of 3 models (lwmm-hub)", "initial commit"]  # ONE commit
    assert sorted(api.list_repo_files(repo_id, revision=commits[0].commit_id)) == PUSHED_FILES
    for name in PUSHED_FILES[1:]:
        pushed = Path(api.hf_hub_download(repo_id, name))
        assert pushed.read_bytes() == (output / name).read_bytes()
        assert hub.token.encode() not in pushed.read_bytes()

    card = api.model_info(repo_id).card_data
    assert card["base_model"] == sources.repo_ids and card["base_model_relation"] == "merge"
    assert [source["commit"] for source in card["lwmm_sources"]] == sources.commits
    assert f'from_pretrained("{repo_id}")' in (output / "README.md").read_text()
    recipe = yaml.safe_load((output / "lwmm_recipe.yaml").read_text())
    assert [source["commit"] for source in recipe["sources"]] == sources.commits
    assert recipe["recipe"]["models"] == sources.refs

    (collection,) = api.list_collections(owner=hub.user)
    assert collection.title == "UDA merges"
    (item,) = api.get_collection(collection.slug).items
    assert item.item_id == repo_id and item.note.startswith("layerwise merge of ")
    assert all(commit[:10] in item.note for commit in sources.commits) and "(anchor)" in item.note

    pushed, local = weights_of(repo_id), weights_of(output)
    assert pushed.keys() == local.keys() and all(torch.equal(pushed[k], local[k]) for k in local)

    assert lwmm("reproduce", repo_id) == 0
    assert "match: the weights are bit-identical" in capfd.readouterr().out


def test_reproduce_detects_a_changed_source(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(3)]
    output = tmp_path / "merged"
    assert lwmm("merge", *models, "--anchor", models[1], "--alpha", "0.5", "--output", output) == 0
    assert lwmm("reproduce", output) == 0
    published = sha256_of(output / "model.safetensors")
    assert f"model.safetensors  {published[:16]}  {published[:16]}  match" in capfd.readouterr().out

    make_tiny_segformer(models[2], seed=7)  # the source changes under the recorded recipe
    assert lwmm("reproduce", output) == 1
    out = capfd.readouterr().out
    assert "MISMATCH: the weights differ from the published ones" in out
    assert sha256_of(output / "model.safetensors") == published  # reproduce never touches the published folder


def test_private_sources_and_private_push_need_the_token(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture) -> None:
    api = HfApi(token=hub.token)
    for seed in range(2):
        api.create_repo(f"{hub.user}/secret-{seed}", private=True)
        upload(api, f"{hub.user}/secret-{seed}", make_tiny_segformer(tmp_path / f"m{seed}", seed=seed), "weights")
    refs = [f"{hub.user}/secret-0", f"{hub.user}/secret-1"]
    assert lwmm("merge", *refs, "--output", tmp_path / "anonymous") == 2
    assert "repository not found (or private: set HF_TOKEN" in capfd.readouterr().err

    monkeypatch.setenv("HF_TOKEN", hub.token)
    repo_id = f"{hub.user}/private-merge"
    assert lwmm("merge", *refs, "--output", tmp_path / "out", "--push-to-hub", repo_id, "--private") == 0
    log = capfd.readouterr()
    assert hub.token not in log.out + log.err
    assert api.model_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(repo_id)
    for name in ("README.md", "lwmm_recipe.yaml", "config.json"):
        assert hub.token not in (tmp_path / "out" / name).read_text()


def test_unknown_repo_revision_and_pickle_only_repo_fail_in_one_line(hub: HubServer, sources: Sources, tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture) -> None:
    api = HfApi()
    api.create_repo(f"{ORG}/pickled")
    api.upload_file(path_or_fileobj=sources.local[0] / "config.json", path_in_repo="config.json", repo_id=f"{ORG}/pickled")
    api.upload_file(path_or_fileobj=b"\x80\x02pickle", path_in_repo="pytorch_model.bin", repo_id=f"{ORG}/pickled")
    cases = {
        f"{ORG}/no-such-model": f"model {ORG}/no-such-model: repository not found",
        f"{ORG}/uda-hrda@v9": f"model {ORG}/uda-hrda@v9: revision 'v9' not found",
        f"{ORG}/uda-daformer:checkpoint-9": "subfolder 'checkpoint-9'",
        f"{ORG}/pickled": f"model {ORG}/pickled: the repo has only pickle weights (pytorch_model.bin)",
    }
    for ref, message in cases.items():
        output = tmp_path / ref.replace("/", "_")
        assert lwmm("merge", sources.refs[0], ref, "--output", output) == 2
        err = capfd.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("lwmm-hub merge: error: ") and message in err
        assert not output.exists()


def test_push_without_token_fails_before_merging(hub: HubServer, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    assert lwmm("merge", *models, "--output", tmp_path / "out", "--push-to-hub", f"{hub.user}/x") == 2
    assert "pushing needs a Hugging Face token with write access: set HF_TOKEN" in capfd.readouterr().err
    assert not (tmp_path / "out").exists()
    assert lwmm("merge", *models, "--output", tmp_path / "out") == 0
    assert lwmm("push", tmp_path / "out", f"{hub.user}/x") == 2
    assert "set HF_TOKEN or run `hf auth login`" in capfd.readouterr().err
    assert not hub.requests_to(r"^POST /api/repos/create")


def test_failed_push_keeps_the_output_and_names_the_retry_command(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    output = tmp_path / "out"
    assert lwmm("merge", *models, "--output", output) == 0
    before = {path.name: path.read_bytes() for path in output.iterdir()}

    hub.fail_next(1, matching=r"^PUT /_lfs_upload/")  # transient: the client retries the upload
    assert lwmm("push", output, f"{hub.user}/retried-upload") == 0
    assert [r.status for r in hub.requests_to(r"^PUT /_lfs_upload/")] == [500, 200, 200]  # weights and plot

    capfd.readouterr()
    repo_id, message = f"{hub.user}/failed-commit", f"merge of {len(models)} tiny models"
    hub.fail_next(1, matching=r"^POST /api/models/.*/commit/")  # the client does not retry a commit
    assert lwmm("push", output, repo_id, "--revision", "experiments", "--create-branch", "--commit-message", message) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]  # above it: the client's progress bars
    assert err.startswith(f"lwmm-hub push: error: push to {repo_id} failed: HTTP 500")
    assert f"The merged model is intact in {output}" in err
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert HfApi().list_repo_commits(repo_id, revision="experiments")[0].title == "initial commit"
    retry = shlex.split(err.split("retry with: ", 1)[1])
    assert retry[:2] == ["lwmm-hub", "push"] and lwmm(*retry[1:]) == 0
    assert "pushed 6 files" in capfd.readouterr().out
    assert HfApi().list_repo_commits(repo_id, revision="experiments")[0].title == message
    assert lwmm(*retry[1:]) == 0  # pushing again changes nothing and says so
    assert "already up to date" in capfd.readouterr().out


def test_offline_merge_uses_the_warm_cache_and_explains_a_cold_one(hub: HubServer, sources: Sources, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    assert lwmm("merge", *sources.refs, "--output", tmp_path / "online") == 0
    go_offline(monkeypatch)
    served = len(hub.requests)
    assert lwmm("merge", *sources.refs, "--output", tmp_path / "offline") == 0
    assert len(hub.requests) == served
    assert sha256_of(tmp_path / "offline" / "model.safetensors") == sha256_of(tmp_path / "online" / "model.safetensors")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cold-cache"))
    capfd.readouterr()
    assert lwmm("merge", *sources.refs, "--output", tmp_path / "cold") == 2
    assert f"model {sources.refs[0]}: not in the local Hugging Face cache and the Hub cannot be reached (offline)" in capfd.readouterr().err


def test_push_verifies_the_recorded_sha256_and_refuses_tags_and_unasked_branches(hub: HubServer, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    output = tmp_path / "out"
    assert lwmm("merge", *models, "--output", output) == 0
    repo_id = f"{hub.user}/verified"

    def refused(*argv: str | Path) -> str:
        capfd.readouterr()
        assert lwmm(*argv) == 2
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lwmm-hub push: error: "), lines
        return lines[0]

    weights = output / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped after the merge
    assert "model.safetensors: its sha256 differs from the one recorded in lwmm_recipe.yaml" in refused("push", output, repo_id)
    weights.write_bytes(original)
    assert not hub.requests_to(r"^(POST|PUT) ")  # nothing was created or uploaded

    api = HfApi()
    api.create_repo(repo_id)
    tagged = api.repo_info(repo_id).sha
    api.create_tag(repo_id, tag="v2")
    assert "--revision v2: is a tag of" in refused("push", output, repo_id, "--revision", "v2")
    assert "--revision dev: " in refused("push", output, repo_id, "--revision", "dev")
    assert "--create-branch" in refused("push", output, repo_id, "--revision", "dev")
    refs = api.list_repo_refs(repo_id)
    assert [b.name for b in refs.branches] == ["main"] and [(t.name, t.target_commit) for t in refs.tags] == [("v2", tagged)]

    assert lwmm("push", output, repo_id, "--revision", "dev", "--create-branch") == 0
    assert sorted(b.name for b in api.list_repo_refs(repo_id).branches) == ["dev", "main"]
    assert api.repo_info(repo_id, revision="v2").sha == tagged  # the tag still names the model it tagged
    assert api.hf_hub_download(repo_id, "model.safetensors", revision="dev") and api.list_repo_commits(repo_id, revision="dev")[0].title.startswith("Add")


def test_bad_push_repo_is_refused_before_the_merge(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    assert lwmm("merge", *models, "--output", tmp_path / "out", "--push-to-hub", "a/b/c") == 2
    assert "repo 'a/b/c': expected a Hub repo id" in capfd.readouterr().err
    assert not (tmp_path / "out").exists() and not hub.requests

    repo_id = f"{hub.user}/tagged"
    HfApi().create_repo(repo_id)
    HfApi().create_tag(repo_id, tag="v1")
    for revision, message in [("v1", "--revision v1: is a tag of"), ("dev", "--revision dev: ")]:
        assert lwmm("merge", *models, "--output", tmp_path / "out", "--push-to-hub", repo_id, "--revision", revision) == 2
        assert message in capfd.readouterr().err
        assert not (tmp_path / "out").exists()
