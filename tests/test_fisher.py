"""Fisher merging: the diagonal Fisher of a 2-parameter toy is the closed form; the merge applies it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import make_tiny_segformer
from hf_lwmm.cli import main
from hf_lwmm.evaluation.data import load_segmentation_data
from hf_lwmm.methods.fisher import diagonal_fisher, model_fisher
from hf_lwmm.methods.functional import fisher_weighted_average
from hf_lwmm.refs import resolve


class TwoParameterToy(torch.nn.Module):
    """Two-class logits per pixel: (a·x, b·x)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.cat([self.a * pixel_values, self.b * pixel_values], dim=1))


def closed_form_fisher(a: float, b: float, images: list[np.ndarray]) -> tuple[float, float]:
    """d/da of Σ log p(ŷ) = Σ over pixels of x·(1[ŷ=0] − p₀); d/db = Σ x·(1[ŷ=1] − p₁); then E[g²] over images."""
    squares = []
    for x in images:
        p0 = 1.0 / (1.0 + np.exp((b - a) * x))
        y0 = (a * x >= b * x).astype(float)  # argmax picks class 0 on ties
        squares.append(((x * (y0 - p0)).sum() ** 2, (x * ((1 - y0) - (1 - p0))).sum() ** 2))
    return tuple(np.mean(squares, axis=0))


def test_diagonal_fisher_of_a_two_parameter_toy_is_the_closed_form():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(3, 4)) for _ in range(5)]
    fisher = diagonal_fisher(TwoParameterToy(0.7, -0.4), (torch.from_numpy(x)[None, None] for x in images))
    expected_a, expected_b = closed_form_fisher(0.7, -0.4, images)
    assert fisher["a"].item() == pytest.approx(expected_a, rel=1e-6)
    assert fisher["b"].item() == pytest.approx(expected_b, rel=1e-6)


def test_fisher_weighted_average_of_the_toy_follows_the_formula():
    theta = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])]
    fishers = [torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0])]
    merged = fisher_weighted_average(theta, fishers, [0.5, 0.5])
    # element 0: (3·1 + 1·3) / (3 + 1) = 1.5; element 1 has no information: the λ-average (−2 + 4) / 2 = 1
    torch.testing.assert_close(merged, torch.tensor([1.5, 1.0]))


def write_images(folder: Path, count: int = 3) -> Path:
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(folder / "images" / f"{index}.png")
    return folder


def test_fisher_merge_writes_the_fisher_weighted_average(tmp_path):
    models = [make_tiny_segformer(tmp_path / f"model_{i}", seed=i) for i in range(2)]
    images = write_images(tmp_path / "unlabelled")
    output = tmp_path / "merged"
    assert main(["merge", *map(str, models), "--method", "fisher", "--fisher-data", str(images),
                 "--fisher-samples", "2", "--output", str(output)]) == 0

    data = load_segmentation_data(str(images), labelled=False, max_samples=2)
    fishers = [model_fisher(resolve(str(model)), data, device=torch.device("cpu"), progress=False) for model in models]
    weights = [load_file(model / "model.safetensors") for model in models]
    merged = load_file(output / "model.safetensors")
    for name in ("segformer.encoder.block.1.0.attention.self.query.weight", "decode_head.linear_fuse.weight", "decode_head.classifier.weight"):
        expected = fisher_weighted_average([w[name] for w in weights], [f[name] for f in fishers], [0.5, 0.5])
        torch.testing.assert_close(merged[name], expected)
    classifier = "decode_head.classifier.weight"
    assert not torch.allclose(merged[classifier], (weights[0][classifier] + weights[1][classifier]) / 2)  # not the plain mean
    assert "fisher_samples: 2" in (output / "lwmm_recipe.yaml").read_text()


def test_fisher_without_data_is_one_line(tmp_path, capsys):
    models = [make_tiny_segformer(tmp_path / f"model_{i}", seed=i) for i in range(2)]
    assert main(["merge", *map(str, models), "--method", "fisher", "--output", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith("lwmm-hub merge: error: --method fisher needs --fisher-data (unlabelled target-domain images")
    assert not (tmp_path / "out").exists()
