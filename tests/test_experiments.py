"""``scripts/run_experiments.py`` on a tiny synthetic zoo: every table row is produced, numbers match a
hand-run merge + evaluation, the selection protocol holds, and two runs write identical results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_tiny_segformer
from hf_lwmm.evaluation.confusion import mean_iou as confusion_mean_iou
from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.experiments.zoo import COARSE_ROLE, WIDE_HEAD_ROLE, load_zoo
from hf_lwmm.evaluation.runner import Predictor, evaluate_predictors
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe, RunOptions
from hf_lwmm.schedules import DEFAULT_ANCHOR_SHARE, DEFAULT_START_LAYER
from test_eval import class_names, tiny_samples, write_paired_folder


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_experiments.py"
POOL = {"base": "base", "source-only": "strategy", "mean-teacher": "strategy"}
CHECKPOINTS = ["mean-teacher-step0001", "mean-teacher"]


@pytest.fixture(scope="module")
def experiments():
    spec = importlib.util.spec_from_file_location("run_experiments", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def entry(name: str, role: str, *, num_labels: int = 5, width: int = 16) -> dict:
    return {"name": name, "role": role, "strategy": "x", "num_labels": num_labels, "decoder_hidden_size": width,
            "parameters": 1, "scores": {"day_test": 0.5, "dusk_val": 0.25}, "train_seconds": None}


def tiny_zoo(root: Path) -> Path:
    """Three pool models, an earlier checkpoint of one, a coarse-class model and a wide-head model, with zoo.json."""
    entries = [entry(name, role) for name, role in POOL.items()]
    for seed, name in enumerate([*POOL, CHECKPOINTS[0]]):
        make_tiny_segformer(root / name, seed=seed)
    entries.append(entry(CHECKPOINTS[0], "checkpoint"))
    coarse = make_tiny_segformer(root / "coarse-objects", seed=10, num_labels=4)
    config = json.loads((coarse / "config.json").read_text())
    names = ["class_0", "class_1", "object", "class_4"]  # class_2 and class_3 folded into one class
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    (coarse / "config.json").write_text(json.dumps(config))
    entries.append(entry("coarse-objects", "class-set variant", num_labels=4))
    make_tiny_segformer(root / "head-24", seed=11, decoder_hidden_size=24)
    entries.append(entry("head-24", "head-width variant", width=24))
    (root / "zoo.json").write_text(json.dumps({"models": entries, "checkpoint_series": {"mean-teacher": CHECKPOINTS}}))
    return root


def tiny_data(root: Path) -> tuple[Path, Path]:
    """``dusk/val`` (labelled), ``dusk/train`` (images only) with a classes.json above them, and a test folder."""
    (root / "classes.json").parent.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"id2label": dict(enumerate(class_names())), "ignore_index": 255}))
    for split, seed in (("val", 0), ("train", 1)):
        folder = root / "dusk" / split / "images"
        folder.mkdir(parents=True)
        for index, (image, label) in enumerate(tiny_samples(seed=seed, count=3)):
            Image.fromarray(image).save(folder / f"frame_{index}.png")
            if split == "val":
                (folder.parent / "labels").mkdir(exist_ok=True)
                Image.fromarray(label).save(folder.parent / "labels" / f"frame_{index}.png")
    test = write_paired_folder(root.parent / "held-out", tiny_samples(seed=2, count=2))
    return root, test


@pytest.fixture(scope="module")
def run_twice(experiments, tmp_path_factory):
    """Two full runs on a 2 × 2 sweep grid; merged cards skip their weight plot (the cards are not under test,
    and matplotlib was 40% of the time)."""
    base = tmp_path_factory.mktemp("experiments")
    zoo = tiny_zoo(base / "zoo")
    data, test = tiny_data(base / "data")
    outputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hf_lwmm.experiments.paper.SWEEP_SHARES", (0.0, 0.5))
        patch.setattr("hf_lwmm.experiments.paper.SWEEP_STARTS", ("patch_embeddings.2", "linear_c.0"))
        patch.setattr("hf_lwmm.card.plot_layer_weights", lambda result, path: None)
        for name in ("first", "second"):
            argv = ["--zoo", str(zoo), "--data", str(data), "--test-dir", str(test), "--out", str(base / name), "--device", "cpu",
                    "--threads", "1", "--fisher-samples", "2", "--resamples", "200", "--quiet"]
            assert experiments.main(argv) == 0
            outputs.append(base / name)
    return zoo, data, test, outputs


def rows_of(folder: Path, key: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((folder / f"{key}.json").read_text())["rows"]}


def mean_iou(folder: Path, data: Path) -> float:
    report = evaluate_predictors([("m", folder)], [Predictor("m", (0,))], load_segmentation_data(str(data)), progress=False)
    return report.rows[0].mean_iou


def test_every_table_row_is_produced_on_both_datasets(run_twice):
    zoo, data, test, (out, _) = run_twice
    ranking = json.loads((out / "ranking.json").read_text())["ranking"]
    assert sorted(ranking) == sorted(POOL)
    assert set(rows_of(out, "ranking")) == {*POOL, *CHECKPOINTS, "coarse-objects", "head-24"}

    table2 = rows_of(out, "table2")
    methods = [row["method"] for row in table2.values()]
    assert methods.count("isotropic") == methods.count("fisher") == methods.count("ensemble") == 2  # k = 2, 3
    assert methods.count("layer-wise") == methods.count("layer-wise defaults") == 2
    assert all(row["dusk/val"] is not None and row["test"] is not None for row in table2.values())
    assert all(low <= row[key]["mean_iou"] <= high for row in table2.values() for key in ("dusk/val", "test")
               for low, high in [row[key]["interval"]])
    assert {row["relative_cost"] for row in table2.values() if row["method"] == "ensemble"} == {2, 3}

    table3 = rows_of(out, "table3")
    assert sum(row["method"] == "layer-wise" for row in table3.values()) == 6  # 3 × 2 ordered pairs
    markdown = (out / "table3.md").read_text()
    assert markdown.count("\n| ") == 2 * (1 + 6)  # header + 6 pairs, on dusk/val and test

    table4 = (out / "table4.md").read_text()
    assert table4.count("n/a (") == 2 * 2 * 2  # isotropic and Fisher of every tensor, (a) and (b), two datasets
    unavailable = [row for row in rows_of(out, "table4").values() if "unavailable" in row]
    assert all(row["dusk/val"] is None and row["test"] is None for row in unavailable)
    assert "classifier" in unavailable[0]["unavailable"]

    checkpoints = rows_of(out, "checkpoints")
    assert {row["method"] for row in checkpoints.values()} == {"single", "isotropic", "layer-wise", "ensemble"}
    fig2 = json.loads((out / "fig2.json").read_text())["pairs"]
    assert len(fig2) == 1 + 2  # one checkpoint step, two strategies against the best
    for plot in ("fig5_sweep_k2.png", "fig5_sweep_k3.png", "fig2_discrepancy.png", "fig3_checkpoints_dusk-val.png", "fig3_checkpoints_test.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "results.md").read_text()
    assert "scripts/run_experiments.py --zoo" in summary and "wall time" in summary and "bootstrap" in summary
    assert "paired differences" in (out / "table2.md").read_text()
    assert set(json.loads((out / "timings.json").read_text())["seconds"]) == {"ranking", "fig5", "table2", "table3", "table4", "checkpoints", "fig2"}


def test_settings_come_from_dusk_val_by_the_uniform_rule_and_rows_equal_a_separate_merge(run_twice):
    zoo, data, test, (out, _) = run_twice
    sweep = json.loads((out / "fig5.json").read_text())
    for count in (2, 3):
        record = sweep[f"k{count}"]
        best = max(record["points"], key=lambda point: point["mean_iou"])
        tied = {(setting["share"], setting["start_layer"]): setting["mean_anchor_weight"] for setting in record["tied"]}
        chosen = record["chosen"]
        shares = dict(zip(record["alphas"], record["shares"]))
        assert (shares[best["alpha"]], best["start_layer_name"]) in tied and (chosen["share"], chosen["start_layer"]) in tied
        assert chosen["mean_anchor_weight"] == min(tied.values())  # the most uniform of the tied settings
    assert set(sweep["default"]) == {"share", "start_layer", "tied_with_best_at_k", "cli_defaults"}
    assert sweep["default"]["cli_defaults"] == {"share": DEFAULT_ANCHOR_SHARE, "start_layer": DEFAULT_START_LAYER}

    ranking = json.loads((out / "ranking.json").read_text())["ranking"]
    anchor, other = ranking[1], ranking[0]
    chosen = sweep["k2"]["chosen"]
    row = next(row for row in rows_of(out, "table3").values() if row["models"] == [anchor, other])
    assert row["anchor"] == anchor and row["start_layer"] == chosen["start_layer"]
    assert row["alpha"] == pytest.approx(0.5 + chosen["share"] * 0.5)
    recipe = MergeRecipe(models=[str(zoo / anchor), str(zoo / other)], anchor=str(zoo / anchor),
                         parameters={"alpha": row["alpha"], "start_layer": row["start_layer"]})
    merged = merge(recipe, zoo.parent / "check", RunOptions(device="cpu", progress=False)).output_dir
    assert row["dusk/val"]["mean_iou"] == pytest.approx(mean_iou(merged, data / "dusk" / "val"), abs=1e-12)
    assert row["test"]["mean_iou"] == pytest.approx(mean_iou(merged, test), abs=1e-12)


def test_per_image_confusions_add_up_to_the_whole_set_score(run_twice):
    zoo, data, _, _ = run_twice
    folders = [(name, zoo / name) for name in POOL]
    predictors = [Predictor("base", (0,)), Predictor("ensemble", (0, 1, 2))]
    report = evaluate_predictors(folders, predictors, load_segmentation_data(str(data / "dusk" / "val")), progress=False, per_image=True)
    for row in report.rows:
        assert row.image_confusions.shape == (3, 5, 6)  # 3 images, 5 classes (+ the out-of-range column)
        assert confusion_mean_iou(row.image_confusions.sum(axis=0)) == pytest.approx(row.mean_iou, abs=1e-12)
    assert "image_confusions" not in report.to_dict()["rows"][0]


def test_an_ensemble_averages_every_member_whatever_their_order(run_twice):
    zoo, data, test, (out, _) = run_twice
    row = next(row for row in rows_of(out, "checkpoints").values() if row["method"] == "ensemble")
    assert row["models"] == CHECKPOINTS and row["relative_cost"] == 2
    folders = [(name, zoo / name) for name in CHECKPOINTS]
    report = evaluate_predictors(folders, [Predictor("ensemble", (0, 1))], load_segmentation_data(str(data / "dusk" / "val")), progress=False)
    assert row["dusk/val"]["mean_iou"] == pytest.approx(report.rows[0].mean_iou, abs=1e-12)


def test_two_runs_write_identical_results(run_twice):
    _, _, _, (first, second) = run_twice
    files = sorted(path.name for path in first.glob("*.json") if path.name != "timings.json")
    assert files == ["checkpoints.json", "fig2.json", "fig5.json", "ranking.json", "table2.json", "table3.json", "table4.json"]
    for name in files:
        assert (first / name).read_text() == (second / name).read_text(), name


def test_a_checkpoint_series_still_being_built_is_left_out(experiments, tmp_path):
    zoo = tiny_zoo(tmp_path / "zoo")
    manifest = json.loads((zoo / "zoo.json").read_text())
    manifest["checkpoint_series"]["mean-teacher"] = ["mean-teacher-step0001", "mean-teacher-step0002", "mean-teacher"]
    (zoo / "zoo.json").write_text(json.dumps(manifest))
    loaded = load_zoo(zoo)
    assert loaded.checkpoints == [] and loaded.pool == list(POOL)
    assert loaded.variant(COARSE_ROLE) == "coarse-objects" and loaded.variant(WIDE_HEAD_ROLE) == "head-24"


def test_a_zoo_without_manifest_fails_with_one_line(experiments, tmp_path, capsys):
    (tmp_path / "zoo").mkdir()
    assert experiments.main(["--zoo", str(tmp_path / "zoo"), "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "zoo.json" in error[0]
