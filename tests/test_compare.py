"""``lwmm-hub compare``: rows, anchors and costs (``merge --eval-dataset`` in the card: test_card.py)."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_segformer
from hf_lwmm.recipe import RunOptions
from hf_lwmm.cli import main
from hf_lwmm.merge import merge
from hf_lwmm.recipe import MergeRecipe
from test_eval import single_model_miou, tiny_samples, write_paired_folder

QUIET = RunOptions(progress=False)


@pytest.fixture
def setting(tmp_path):
    models = [str(make_tiny_segformer(tmp_path / f"model_{i}", seed=i)) for i in range(2)]
    data = write_paired_folder(tmp_path / "data", tiny_samples(count=3))
    return tmp_path, models, data



def test_compare_reports_every_baseline_with_costs_and_the_best_anchor(setting, capsys):
    tmp_path, models, data = setting
    output = tmp_path / "compare"
    assert main(["compare", *models, "--dataset", str(data), "--fisher-data", str(data), "--fisher-samples", "1",
                 "--output-dir", str(output)]) == 0
    result = json.loads((output / "compare.json").read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == [*models, "isotropic merge", "fisher merge", "layer-wise merge", "ensemble of 2"]
    assert {name: row["relative_cost"] for name, row in rows.items()} == {**{name: 1 for name in list(rows)[:-1]}, "ensemble of 2": 2}
    anchor = max(models, key=lambda name: rows[name]["mean_iou"])
    assert result["anchor"] == anchor and result["recipes"]["layer-wise merge"]["anchor"] == anchor

    layerwise = merge(MergeRecipe(models=models, anchor=anchor), tmp_path / "layerwise", QUIET)
    assert rows["layer-wise merge"]["mean_iou"] == pytest.approx(single_model_miou(layerwise.output_dir, data), abs=1e-12)
    assert (output / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert f"anchor: {anchor}" in table and "Δ vs anchor" in table


def test_compare_with_an_unknown_anchor_is_one_line(setting, capsys):
    tmp_path, models, data = setting
    assert main(["compare", *models, "--dataset", str(data), "--anchor", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "c")]) == 2
    assert "--anchor" in capsys.readouterr().err.strip().splitlines()[-1]
