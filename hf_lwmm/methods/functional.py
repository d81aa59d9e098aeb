"""Pure tensor functions behind the merge methods: no I/O, float32 in, float32 out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def _stacked_weights(weights: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    weights = torch.as_tensor(weights, dtype=torch.float32, device=like.device)
    return weights.reshape(-1, *([1] * (like.dim() - 1)))


def weighted_average(tensors: Iterable[torch.Tensor], weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Σᵢ wᵢ·θᵢ (weights already sum to one), accumulated one tensor at a time.

    ``tensors`` may be a lazy iterator: only the running sum and one input are alive at once, so
    memory does not grow with the number of models.
    """
    total: torch.Tensor | None = None
    for tensor, weight in zip(tensors, torch.as_tensor(weights, dtype=torch.float32).tolist(), strict=True):
        if total is None:
            total = torch.mul(tensor, weight, out=torch.empty_like(tensor, dtype=torch.float32))
        else:
            total.add_(tensor, alpha=weight)  # fused: no temporary per model
    if total is None:
        raise ValueError("weighted_average of no tensors")
    return total


def gaussian_bn_stats(means: list[torch.Tensor], variances: list[torch.Tensor],
                      weights: torch.Tensor | list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of the mixture of per-model Gaussians N(μᵢ, σᵢ²) with mixing weights wᵢ.

    μ = Σ wᵢμᵢ and σ² = Σ wᵢ(σᵢ² + μᵢ²) − μ², clamped at 0 against rounding.
    """
    mean_stack = torch.stack([m.float() for m in means])
    var_stack = torch.stack([v.float() for v in variances])
    w = _stacked_weights(weights, mean_stack)
    mean = (w * mean_stack).sum(dim=0)
    variance = (w * (var_stack + mean_stack.square())).sum(dim=0) - mean.square()
    return mean, variance.clamp_min(0.0)


def fisher_weighted_average(tensors: Iterable[torch.Tensor], fishers: Iterable[torch.Tensor | None],
                            weights: torch.Tensor | Sequence[float], *, epsilon: float = 1e-8) -> torch.Tensor:
    """Σᵢ wᵢFᵢθᵢ / Σᵢ wᵢFᵢ elementwise (Matena & Raffel, 2022), accumulated one model at a time.

    A ``None`` Fisher is zero (a tensor without gradient); ε keeps all-zero entries a plain weighted mean.
    """
    numerator: torch.Tensor | None = None
    denominator: torch.Tensor | None = None
    for tensor, fisher, weight in zip(tensors, fishers, torch.as_tensor(weights, dtype=torch.float32).tolist(), strict=True):
        tensor = tensor.float()
        information = torch.zeros_like(tensor) if fisher is None else fisher.to(tensor.device, torch.float32)
        weighted = (information + epsilon) * weight
        term = weighted * tensor
        numerator = term if numerator is None else numerator.add_(term)
        denominator = weighted if denominator is None else denominator.add_(weighted)
    if numerator is None or denominator is None:
        raise ValueError("fisher_weighted_average of no tensors")
    return numerator / denominator
