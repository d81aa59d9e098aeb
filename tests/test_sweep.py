"""``lwmm-hub sweep``: every grid point is produced, and each equals a separate merge + evaluation."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_segformer
from hf_lwmm.recipe import RunOptions
from hf_lwmm.cli import main
from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.evaluation.sweep import default_start_layers, shared_layers, sweep_layerwise
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe
from test_eval import single_model_miou, tiny_samples, write_paired_folder

QUIET = RunOptions(progress=False)


@pytest.fixture
def setting(tmp_path):
    models = [str(make_tiny_segformer(tmp_path / f"model_{i}", seed=i)) for i in range(3)]
    data = write_paired_folder(tmp_path / "data", tiny_samples(count=3))
    return tmp_path, models, data



def test_default_start_layers_are_evenly_spaced():
    assert default_start_layers(23) == [0, 3, 6, 9, 12, 15]
    assert default_start_layers(4) == [0, 1, 2, 3]


def test_sweep_produces_every_point_and_each_equals_a_separate_merge(setting):
    tmp_path, models, data = setting
    anchor = models[1]
    layers = shared_layers(models, anchor=anchor)
    assert len(layers) == 4 * 3 + 7  # per stage: patch embedding, 1 block, norm; head: 4 linear_c, fuse, norm, classifier
    result = sweep_layerwise(models, load_segmentation_data(str(data)), anchor=anchor, alphas=[0.2, 0.6],
                             start_layers=[0, "block.2.0", 18], models_per_pass=4, progress=False)
    assert [(p.alpha, p.start_layer) for p in result.points] == [(a, s) for a in (0.2, 0.6) for s in (0, 7, 18)]
    assert result.start_layers == [0, 7, 18] and result.layers == layers
    assert result.anchor_result.mean_iou == pytest.approx(single_model_miou(anchor, data), abs=1e-12)

    chosen = result.point(0.6, 7)
    merged = merge(MergeRecipe(models=models, anchor=anchor, parameters={"alpha": 0.6, "start_layer": 7}), tmp_path / "check", QUIET)
    assert chosen.result.mean_iou == pytest.approx(single_model_miou(merged.output_dir, data), abs=1e-12)
    assert chosen.start_layer_name == "block.2.0"
    assert len({round(p.result.mean_iou, 12) for p in result.points}) > 1  # the grid points are distinct models
    assert result.best().result.mean_iou == max(p.result.mean_iou for p in result.points)


def test_sweep_command_writes_table_json_and_plot(setting, capsys):
    tmp_path, models, data = setting
    output = tmp_path / "sweep"
    assert main(["sweep", *models[:2], "--dataset", str(data), "--anchor", models[0], "--alphas", "0.5,1",
                 "--start-layers", "0,10", "--models-per-pass", "3", "--output-dir", str(output)]) == 0
    document = json.loads((output / "sweep.json").read_text())
    assert [(p["alpha"], p["start_layer"]) for p in document["points"]] == [(0.5, 0), (0.5, 10), (1.0, 0), (1.0, 10)]
    anchor_alone = document["anchor_result"]["mean_iou"]
    # α = 1 keeps every shared layer of the anchor: the anchor itself
    assert [p["mean_iou"] for p in document["points"][2:]] == pytest.approx([anchor_alone] * 2, abs=1e-12)
    assert (output / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "α=0.5" in table and "best (*)" in table


def test_out_of_range_start_layer_fails_before_any_merge(setting, capsys):
    tmp_path, models, data = setting
    with pytest.raises(LwmmError, match="recipe field 'start_layer': 99: out of range"):
        sweep_layerwise(models, load_segmentation_data(str(data)), anchor=models[0], alphas=[0.5], start_layers=[99], progress=False)
    assert main(["sweep", *models, "--dataset", str(data), "--alphas", "x", "--output-dir", str(tmp_path / "s")]) == 2
    assert "--alphas" in capsys.readouterr().err
