"""Pure tensor functions behind the merge methods: no I/O, float32 in, float32 out."""

from __future__ import annotations

import torch


def _stacked_weights(weights: torch.Tensor | list[float], like: torch.Tensor) -> torch.Tensor:
    weights = torch.as_tensor(weights, dtype=torch.float32, device=like.device)
    return weights.reshape(-1, *([1] * (like.dim() - 1)))


def weighted_average(tensors: list[torch.Tensor], weights: torch.Tensor | list[float]) -> torch.Tensor:
    """Σᵢ wᵢ·θᵢ (weights already sum to one)."""
    stacked = torch.stack([t.float() for t in tensors])
    return (stacked * _stacked_weights(weights, stacked)).sum(dim=0)


def gaussian_bn_stats(means: list[torch.Tensor], variances: list[torch.Tensor], weights: torch.Tensor | list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of the mixture of per-model Gaussians N(μᵢ, σᵢ²) with mixing weights wᵢ.

    μ = Σ wᵢμᵢ and σ² = Σ wᵢ(σᵢ² + μᵢ²) − μ², clamped at 0 against rounding.
    """
    mean_stack = torch.stack([m.float() for m in means])
    var_stack = torch.stack([v.float() for v in variances])
    w = _stacked_weights(weights, mean_stack)
    mean = (w * mean_stack).sum(dim=0)
    variance = (w * (var_stack + mean_stack.square())).sum(dim=0) - mean.square()
    return mean, variance.clamp_min(0.0)


def fisher_weighted_average(tensors: list[torch.Tensor], fishers: list[torch.Tensor], weights: torch.Tensor | list[float], *, epsilon: float = 1e-8) -> torch.Tensor:
    """Σᵢ wᵢFᵢθᵢ / Σᵢ wᵢFᵢ elementwise (Matena & Raffel, 2022), with ε keeping empty Fisher finite."""
    stacked = torch.stack([t.float() for t in tensors])
    fisher = torch.stack([f.float() for f in fishers]) + epsilon
    w = _stacked_weights(weights, stacked)
    return (w * fisher * stacked).sum(dim=0) / (w * fisher).sum(dim=0)
