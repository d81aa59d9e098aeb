"""Models as they really are on the Hub: pickles on ``main`` with a conversion PR, opt-in pickles, header-only checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from safetensors.torch import load_file
from transformers import SegformerForSemanticSegmentation

from helpers import make_tiny_segformer
from hf_lwmm.cli import main
from hf_lwmm.io import sha256_of
from hf_lwmm.io.pickles import file_names
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.refs import CONVERSION_BOT, CONVERSION_PR_TITLE
from hub_server import HubServer, hub  # noqa: F401  (hub: fixture)

ORG = "nv-lab"


def lwmm(*argv: str | Path) -> int:
    return main([str(arg) for arg in argv])


def last_error(capfd: pytest.CaptureFixture) -> str:
    lines = capfd.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def in_memory_pickle(folder: Path, target: Path) -> Path:
    """``torch.save(model.state_dict())`` under transformers 5: in-memory names (``segformer.stages.0…``)."""
    torch.save(SegformerForSemanticSegmentation.from_pretrained(folder).state_dict(), target)
    return target


def pickled_repo(api: HfApi, repo_id: str, folder: Path, tmp_path: Path) -> str:
    """A repo whose main holds config, preprocessor config and only ``pytorch_model.bin``; returns main's head."""
    api.create_repo(repo_id)
    weights = in_memory_pickle(folder, tmp_path / f"{repo_id.replace('/', '_')}.bin")
    operations = [CommitOperationAdd("config.json", folder / "config.json"),
                  CommitOperationAdd("preprocessor_config.json", folder / "preprocessor_config.json"),
                  CommitOperationAdd("pytorch_model.bin", weights)]
    return api.create_commit(repo_id, operations, commit_message="pickle weights").oid


def open_conversion_pr(api: HfApi, repo_id: str, folder: Path, *, title: str = CONVERSION_PR_TITLE) -> tuple[str, str]:
    """The bot's pull request adding ``model.safetensors`` on top of main: its ``refs/pr/N`` and commit."""
    info = api.create_commit(repo_id, [CommitOperationAdd("model.safetensors", folder / "model.safetensors")],
                             commit_message=title, create_pr=True)
    assert info.pr_revision is not None
    return info.pr_revision, info.oid


@pytest.fixture
def api(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> HfApi:
    hub.add_org(ORG, members=(hub.user,))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return HfApi()


@pytest.fixture
def bot(hub: HubServer) -> HfApi:
    return HfApi(token=hub.add_user(CONVERSION_BOT))


def test_in_memory_names_map_back_to_file_names(tmp_path: Path) -> None:
    folder = make_tiny_segformer(tmp_path / "m")
    in_memory = SegformerForSemanticSegmentation.from_pretrained(folder).state_dict()
    on_disk = load_file(folder / "model.safetensors")
    assert set(in_memory) != set(on_disk)  # transformers 5 does rename in memory
    mapped = file_names(in_memory)
    assert set(mapped) == set(on_disk) and all(torch.equal(mapped[name], on_disk[name]) for name in on_disk)
    assert file_names(on_disk) is on_disk  # file names stay as they are
    # and back: a model loads the mapped names (transformers renames them again) to the same tensors
    model = SegformerForSemanticSegmentation.from_pretrained(folder)
    model.load_state_dict({name: torch.zeros_like(t) for name, t in in_memory.items()})
    reloaded = SegformerForSemanticSegmentation.from_pretrained(None, config=model.config, state_dict=mapped)
    assert all(torch.equal(reloaded.state_dict()[name], tensor) for name, tensor in in_memory.items())


def test_merge_uses_the_bots_conversion_pr_and_records_its_commit(hub: HubServer, api: HfApi, bot: HfApi, tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture) -> None:
    famous, other = make_tiny_segformer(tmp_path / "famous", seed=0), make_tiny_segformer(tmp_path / "other", seed=1)
    repo_id = f"{ORG}/segformer-famous"
    pickled_repo(api, repo_id, famous, tmp_path)
    api.create_branch(repo_id, branch="dev")
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n", path_in_repo="README.md", repo_id=repo_id, revision="dev")
    pr, pr_commit = open_conversion_pr(bot, repo_id, famous)
    # decoys, each failing one of transformers' conditions and all newer: the same title by someone else,
    # the bot's PR closed, and the bot's PR whose parent is not main's head
    open_conversion_pr(HfApi(token=hub.add_user("mallory")), repo_id, other)
    closed, _ = open_conversion_pr(bot, repo_id, other)
    hub.state.repos[("model", repo_id)].pulls[int(closed.rsplit("/", 1)[1])].status = "closed"
    bot.create_commit(repo_id, [CommitOperationAdd("model.safetensors", other / "model.safetensors")],
                      commit_message=CONVERSION_PR_TITLE, create_pr=True, revision="dev")
    hub.app.discussions_page_size = 1  # the listing takes pages

    api.create_repo(f"{ORG}/other")
    api.upload_folder(folder_path=other, repo_id=f"{ORG}/other")
    output = tmp_path / "merged"
    capfd.readouterr()
    assert lwmm("merge", repo_id, f"{ORG}/other", "--output", output) == 0
    notices = [line for line in capfd.readouterr().out.splitlines() if "conversion pull request" in line]
    assert notices == [(f"model {repo_id}: main has only pickle weights; using the Hub's safetensors conversion pull request "
                        f"{repo_id}@{pr} (commit {pr_commit})")]
    assert [r.status for r in hub.requests_to(rf"^GET /api/models/{repo_id}/discussions$")] == [200, 200]  # newest first, 2 pages

    expected = merge(MergeRecipe(models=[str(famous), str(other)]), tmp_path / "expected", RunOptions(progress=False))
    assert sha256_of(output / "model.safetensors") == expected.sha256["model.safetensors"]
    recipe = yaml.safe_load((output / "lwmm_recipe.yaml").read_text())
    assert recipe["recipe"]["models"] == [repo_id, f"{ORG}/other"]
    assert recipe["sources"][0]["ref"] == f"{repo_id}@{pr}" and recipe["sources"][0]["commit"] == pr_commit
    card = (output / "README.md").read_text()
    assert f"| `{repo_id}@{pr}` | `{pr_commit}` | anchor |" in card
    assert lwmm("reproduce", output) == 0
    assert "match: the weights are bit-identical" in capfd.readouterr().out

    assert lwmm("merge", f"{repo_id}@{pr}", f"{ORG}/other", "--output", tmp_path / "explicit") == 0  # like any revision
    assert sha256_of(tmp_path / "explicit" / "model.safetensors") == expected.sha256["model.safetensors"]
    assert "conversion pull request" not in capfd.readouterr().out  # an explicit revision is used as given


def test_pickle_only_repo_needs_the_flag_then_loads_the_same_tensors(hub: HubServer, api: HfApi, bot: HfApi, tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture) -> None:
    famous, other = make_tiny_segformer(tmp_path / "famous", seed=0), make_tiny_segformer(tmp_path / "other", seed=1)
    repo_id = f"{ORG}/pickled"
    pickled_repo(api, repo_id, famous, tmp_path)
    api.create_repo(f"{ORG}/other")
    api.upload_folder(folder_path=other, repo_id=f"{ORG}/other")

    assert lwmm("merge", repo_id, f"{ORG}/other", "--output", tmp_path / "refused") == 2
    assert last_error(capfd) == (f"lwmm-hub merge: error: model {repo_id}: the repo has only pickle weights (pytorch_model.bin), "
                                 "never loaded unless asked: pass --allow-pickle to load them with torch.load(weights_only=True)")
    assert hub.weight_bytes_served == 0 and not (tmp_path / "refused").exists()

    assert lwmm("merge", repo_id, f"{ORG}/other", "--allow-pickle", "--output", tmp_path / "pickled") == 0
    merge(MergeRecipe(models=[str(famous), str(other)]), tmp_path / "expected", RunOptions(progress=False))
    pickled, expected = (load_file(tmp_path / name / "model.safetensors") for name in ("pickled", "expected"))
    assert pickled.keys() == expected.keys() and all(torch.equal(pickled[name], expected[name]) for name in expected)

    pr, _ = open_conversion_pr(bot, repo_id, famous)  # an explicit revision never switches to the PR, but the error names it
    assert lwmm("merge", f"{repo_id}@main", f"{ORG}/other", "--output", tmp_path / "named") == 2
    assert last_error(capfd).endswith(f"or merge its safetensors conversion pull request {repo_id}@{pr}")


def test_align_reads_headers_only_and_an_incompatible_pair_fails_before_any_weight_byte(
        hub: HubServer, api: HfApi, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    models = {"a": make_tiny_segformer(tmp_path / "a", seed=0), "b": make_tiny_segformer(tmp_path / "b", seed=1, num_labels=3),
              "deep": make_tiny_segformer(tmp_path / "deep", seed=2, depths=[1, 2, 1, 1])}
    for name, folder in models.items():
        api.create_repo(f"{ORG}/{name}")
        api.upload_folder(folder_path=folder, repo_id=f"{ORG}/{name}")
    capfd.readouterr()
    assert lwmm("align", f"{ORG}/a", f"{ORG}/b") == 0
    hub_report = capfd.readouterr().out
    assert lwmm("align", models["a"], models["b"]) == 0
    assert capfd.readouterr().out == hub_report.replace(f"{ORG}/a", str(models["a"])).replace(f"{ORG}/b", str(models["b"]))
    assert hub.weight_bytes_served == 0
    assert hub.requests_to(r"^GET /nv-lab/a/resolve/[0-9a-f]{40}/model.safetensors$")  # the header was read

    assert lwmm("merge", f"{ORG}/a", f"{ORG}/deep", "--output", tmp_path / "out") == 2
    assert "has encoder depths [1, 2, 1, 1]" in last_error(capfd)
    assert hub.weight_bytes_served == 0 and not (tmp_path / "out").exists()

    assert lwmm("merge", f"{ORG}/a", f"{ORG}/b", "--output", tmp_path / "ab") == 0  # a merge that can go ahead downloads
    size = sum((models[name] / "model.safetensors").stat().st_size for name in "ab")
    assert 0 < hub.weight_bytes_served < size


def test_hub_failures_and_bad_references_are_one_line(hub: HubServer, api: HfApi, tmp_path: Path,
                                                      capfd: pytest.CaptureFixture) -> None:
    folder = make_tiny_segformer(tmp_path / "a")
    api.create_repo(f"{ORG}/a")
    api.upload_folder(folder_path=folder, repo_id=f"{ORG}/a")
    hub.fail_next(1, matching=r"^GET /api/models/")
    assert lwmm("align", f"{ORG}/a", folder) == 2
    error = last_error(capfd)
    assert error == f"lwmm-hub align: error: model {ORG}/a: HTTP 500, Internal Error - injected by the test Hub's fail_next()"
    for text, reason in [(f"{ORG}/a@", "empty revision after '@'"), (f"{ORG}/a:", "empty subfolder after ':'"),
                         (f"{ORG}/..", "not an existing folder nor a Hub repo id"), (f"{ORG}/a:x/../..", "plain path")]:
        assert lwmm("align", text, folder) == 2
        error = last_error(capfd)
        assert error.startswith(f"lwmm-hub align: error: model reference {text!r}: ") and reason in error


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_hub_pickle_never_runs(hub: HubServer, api: HfApi, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    folder = make_tiny_segformer(tmp_path / "a")
    marker = tmp_path / "pwned"
    payload = tmp_path / "pytorch_model.bin"
    torch.save({"x": _Payload(marker)}, payload)
    api.create_repo(f"{ORG}/evil")
    api.create_commit(f"{ORG}/evil", [CommitOperationAdd("config.json", folder / "config.json"),
                                      CommitOperationAdd("pytorch_model.bin", payload)], commit_message="evil")
    assert lwmm("merge", f"{ORG}/evil", folder, "--allow-pickle", "--output", tmp_path / "out") == 2
    error = capfd.readouterr().err.strip().splitlines()
    assert error[-1].startswith(f"lwmm-hub merge: error: model {ORG}/evil: pytorch_model.bin cannot be read with "
                                "torch.load(weights_only=True), which never runs code from a pickle")
    assert not marker.exists() and not (tmp_path / "out").exists()
