"""Per-layer discrepancy between two models: the fraction of a layer's parameters that moved by more than τ.

The relative difference of one element is

    r(a, b) = |a − b| / max(|a|, |b|, ε)

symmetric in the two models, 0 for equal elements, at most 2 (opposite signs, equal magnitudes). ε keeps
elements that are both (nearly) zero from counting as changed by rounding noise. An element *exceeds* τ
when r > τ (strictly). A layer's fraction at τ is (elements exceeding τ) / (elements) over its shared
parameters: floating tensors with the same name and shape in both models, BatchNorm running statistics
excluded (they are buffers estimated from data, not trained weights). Models that fine-tune the same
pretraining keep early layers close and move deep ones: the paper's argument for layer-wise merging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_lwmm.console import progress_bar
from hf_lwmm.errors import LwmmError
from hf_lwmm.layers import layer_of
from hf_lwmm.plan import MergePlan
from hf_lwmm.plotting import new_figure

DEFAULT_TAUS = (0.1,)
DEFAULT_EPSILON = 1e-8
_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def relative_difference(a: torch.Tensor, b: torch.Tensor, *, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
    """Elementwise |a − b| / max(|a|, |b|, ε), in float64 so that τ comparisons are exact for float32 inputs."""
    a, b = a.double(), b.double()
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(epsilon)
    return (a - b).abs() / scale


def exceeding_counts(a: torch.Tensor, b: torch.Tensor, taus: Sequence[float], *, epsilon: float = DEFAULT_EPSILON) -> tuple[int, ...]:
    """How many elements have a relative difference strictly above each τ."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    difference = relative_difference(a, b, epsilon=epsilon)
    return tuple(int((difference > tau).sum()) for tau in taus)


@dataclass(frozen=True)
class LayerDiscrepancy:
    """One layer: its shared parameter count and, per τ, how many of them exceed τ."""

    layer: str
    parameters: int
    exceeding: tuple[int, ...]

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(count / self.parameters for count in self.exceeding)


@dataclass
class Discrepancy:
    """Per-layer discrepancy of model B against model A, shallowest layer first."""

    labels: tuple[str, str]
    taus: tuple[float, ...]
    epsilon: float
    layers: list[LayerDiscrepancy] = field(default_factory=list)

    @property
    def total(self) -> LayerDiscrepancy:
        """All shared parameters together."""
        counts = tuple(sum(layer.exceeding[i] for layer in self.layers) for i in range(len(self.taus)))
        return LayerDiscrepancy("all layers", sum(layer.parameters for layer in self.layers), counts)

    def fractions_at(self, tau: float) -> dict[str, float]:
        """Layer name → fraction of its parameters exceeding ``tau`` (one of :attr:`taus`)."""
        if tau not in self.taus:
            raise LwmmError(f"--tau {tau}: not computed (computed: {', '.join(f'{t:g}' for t in self.taus)})")
        index = self.taus.index(tau)
        return {layer.layer: layer.fractions[index] for layer in self.layers}

    def to_dict(self) -> dict[str, object]:
        return {"models": list(self.labels), "taus": list(self.taus), "epsilon": self.epsilon,
                "definition": "fraction of shared parameters with |a-b|/max(|a|,|b|,epsilon) > tau",
                "layers": [{"layer": layer.layer, "parameters": layer.parameters, "exceeding": list(layer.exceeding),
                            "fractions": list(layer.fractions)} for layer in [*self.layers, self.total]]}


def is_compared(key: str, dtype: torch.dtype) -> bool:
    """Trained floating parameters only: BatchNorm statistics and integer buffers are left out."""
    return dtype.is_floating_point and not key.endswith(_BUFFER_SUFFIXES)


def model_discrepancy(plan: MergePlan, *, taus: Sequence[float] = DEFAULT_TAUS, epsilon: float = DEFAULT_EPSILON,
                      progress: bool = True) -> Discrepancy:
    """Stream the tensors the plan's two models share (aligned by file name), one pair at a time; model A is the anchor."""
    taus = tuple(float(tau) for tau in taus)
    if not taus or any(tau < 0 for tau in taus):
        raise LwmmError(f"--tau {', '.join(map(str, taus)) or '(none)'}: give one or more thresholds ≥ 0")
    if epsilon <= 0:
        raise LwmmError(f"--epsilon {epsilon}: must be positive")
    if len(plan.sources) != 2:
        raise LwmmError(f"diff compares two models, got {len(plan.sources)}")
    alignment, first = plan.alignment, plan.anchor
    a, b = plan.sources[first], plan.sources[1 - first]
    keys = [key for key in alignment.shared
            if is_compared(key, a.infos[alignment.tensors[key].names[first]].dtype)]
    counts: dict[str, list[int]] = {}
    for key in progress_bar(keys, desc="comparing", unit="tensor", enabled=progress):
        names = alignment.tensors[key].names
        tensor_a, tensor_b = a.get(names[first]), b.get(names[1 - first])
        totals = counts.setdefault(layer_of(key), [0] * (len(taus) + 1))
        totals[0] += tensor_a.numel()
        for index, count in enumerate(exceeding_counts(tensor_a, tensor_b, taus, epsilon=epsilon), start=1):
            totals[index] += count
    result = Discrepancy((a.label, b.label), taus, epsilon)
    for layer in (layer for layer in plan.layers if layer in counts):
        parameters, *exceeding = counts[layer]
        result.layers.append(LayerDiscrepancy(layer, parameters, tuple(exceeding)))
    return result


def discrepancy_table(discrepancy: Discrepancy) -> str:
    """One line per layer: parameters compared and the % of them exceeding each τ; then all layers."""
    from hf_lwmm.evaluation.report import text_table

    header = ["layer", "parameters", *(f"> τ={tau:g} %" for tau in discrepancy.taus)]
    rows = [[layer.layer, str(layer.parameters), *(f"{100 * fraction:.2f}" for fraction in layer.fractions)]
            for layer in [*discrepancy.layers, discrepancy.total]]
    return f"A = {discrepancy.labels[0]}\nB = {discrepancy.labels[1]}\n" + text_table(header, rows)


def discrepancy_plot(path: Path, lines: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str = "fraction of parameters") -> None:
    """Layers on x (the first line's order, then any others'), one line per entry of ``lines``.

    A line without a value for a layer (e.g. a head that one pair does not share) has a gap there.
    """
    layers = list(dict.fromkeys(layer for values in lines.values() for layer in values))
    figure, axes = new_figure(max(6.0, 0.35 * len(layers)) + 3.0, 4.0)
    for label, values in lines.items():
        axes.plot(range(len(layers)), [values.get(layer, float("nan")) for layer in layers], marker="o", markersize=3, label=label)
    axes.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: the lines fill them
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
