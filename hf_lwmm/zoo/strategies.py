"""Training strategies: how one step turns a labelled day batch and an unlabelled dusk batch into a loss.

Every strategy keeps the supervised cross-entropy on the labelled source (day) batch; the UDA ones
add a term computed on target (dusk) images only, never on target labels:

* ``supervised``: source cross-entropy alone (the base, source-only and the class/head variants).
* ``entropy``: MinEnt (Vu et al., ADVENT, CVPR 2019): minimise the normalised per-pixel entropy of
  target predictions.
* ``mean_teacher_mix``: self-training in the DACS style (Tranheden et al., WACV 2021): an EMA teacher
  pseudo-labels target crops; ClassMix pastes half of the source classes onto them; the mixed crop is
  learned with the confidence-weighted pseudo-labels.
* ``adversarial``: output-space adversarial adaptation (Tsai et al., AdaptSegNet, CVPR 2018): a small
  fully convolutional discriminator tells source from target softmax maps; the segmenter learns to
  fool it on target images.
* ``fourier``: Fourier domain adaptation (Yang & Soatto, FDA, CVPR 2020): each source image takes the
  low-frequency amplitude spectrum of a target image (its global colour and brightness) and keeps its
  phase (its content); the segmenter learns the source labels on these target-styled images.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from hf_lwmm.zoo.data import IGNORE, Batch


def logits_at_input_size(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """SegFormer predicts at 1/4 resolution; losses compare at the crop's full size."""
    logits = model(pixel_values=pixel_values).logits
    return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def source_loss(model: nn.Module, source: Batch) -> torch.Tensor:
    assert source.labels is not None  # source batches are labelled
    return F.cross_entropy(logits_at_input_size(model, source.pixel_values), source.labels, ignore_index=IGNORE)


@dataclass(frozen=True)
class StepLoss:
    """The loss to back-propagate into the segmenter and its named parts for the progress bar."""

    total: torch.Tensor
    parts: dict[str, float]


def loss_parts(**parts: torch.Tensor) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in parts.items()}


class Strategy(ABC):
    """One training recipe; auxiliary networks (teacher, discriminator) live here and resume with the run."""

    uses_target: bool = True

    @classmethod
    def create(cls, student: nn.Module, options: dict[str, float]) -> Strategy:
        """The strategy with its recipe options; those with auxiliary networks build them from ``student``."""
        return cls(**options)

    @abstractmethod
    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        """The segmenter's loss for one step."""

    def after_step(self, student: nn.Module) -> None:
        """Work after the segmenter's optimiser step (teacher EMA, discriminator update)."""

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restores what :meth:`state_dict` saved."""


class Supervised(Strategy):
    uses_target = False

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        total = source_loss(student, source)
        return StepLoss(total, loss_parts(ce=total))


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel entropy of the softmax divided by log(C), so 1 means uniform."""
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1).mean() / math.log(logits.shape[1])


class EntropyMinimisation(Strategy):
    def __init__(self, *, weight: float) -> None:
        self.weight = weight

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        assert target is not None  # uses_target
        supervised = source_loss(student, source)
        entropy = normalised_entropy(student(pixel_values=target.pixel_values).logits)
        return StepLoss(supervised + self.weight * entropy, loss_parts(ce=supervised, ent=entropy))


def classmix_masks(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per source crop, a mask of the pixels of a random half of the classes present (ClassMix)."""
    masks = []
    for label in labels:
        classes = label.unique()
        classes = classes[classes != IGNORE]
        order = torch.randperm(len(classes), generator=generator)
        chosen = classes[order[: (len(classes) + 1) // 2]]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks)


class MeanTeacherMix(Strategy):
    """DACS: EMA teacher pseudo-labels, ClassMix of source classes onto target crops, confidence weights."""

    @classmethod
    def create(cls, student: nn.Module, options: dict[str, float]) -> Strategy:
        return cls(student, **options)

    def __init__(self, student: nn.Module, *, ema: float, confidence: float, weight: float) -> None:
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.ema = ema
        self.confidence = confidence
        self.weight = weight

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        assert target is not None and source.labels is not None  # uses_target; source batches are labelled
        supervised = source_loss(student, source)
        with torch.no_grad():
            probabilities = logits_at_input_size(self.teacher, target.pixel_values).softmax(dim=1)
            confidence, pseudo = probabilities.max(dim=1)
            target_weight = (confidence > self.confidence).float().mean(dim=(1, 2))  # one weight per crop
            mask = classmix_masks(source.labels, generator).to(pseudo.device)
            mixed_pixels = torch.where(mask[:, None], source.pixel_values, target.pixel_values)
            mixed_labels = torch.where(mask, source.labels, pseudo)
            pixel_weight = torch.where(mask, torch.ones_like(confidence), target_weight[:, None, None].expand_as(confidence))
        per_pixel = F.cross_entropy(logits_at_input_size(student, mixed_pixels), mixed_labels, reduction="none")
        mixed = (per_pixel * pixel_weight).mean()
        return StepLoss(supervised + self.weight * mixed,
                        loss_parts(ce=supervised, mix=mixed, conf=target_weight.mean()))

    @torch.no_grad()
    def after_step(self, student: nn.Module) -> None:
        teacher_state = self.teacher.state_dict()
        for name, value in student.state_dict().items():
            if value.is_floating_point():
                teacher_state[name].mul_(self.ema).add_(value, alpha=1 - self.ema)
            else:
                teacher_state[name].copy_(value)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        self.teacher.load_state_dict(state["teacher"])


def output_discriminator(num_labels: int, *, width: int) -> nn.Sequential:
    """AdaptSegNet's fully convolutional discriminator, three layers deep for 1/4-resolution maps."""
    return nn.Sequential(
        nn.Conv2d(num_labels, width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 1, kernel_size=4, stride=2, padding=1),
    )


class OutputAdversarial(Strategy):
    """The segmenter fools a discriminator on target softmax maps; the discriminator learns source vs target."""

    @classmethod
    def create(cls, student: nn.Module, options: dict[str, float]) -> Strategy:
        return cls(student, **options)

    def __init__(self, student: nn.Module, *, weight: float, discriminator_width: float, discriminator_lr: float) -> None:
        """``discriminator_width`` is a whole number (recipe options are floats)."""
        device = next(student.parameters()).device
        num_labels = cast(PretrainedConfig, student.config).num_labels
        assert num_labels is not None  # a segmentation config always has id2label
        self.discriminator = output_discriminator(num_labels, width=int(discriminator_width)).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=discriminator_lr, betas=(0.9, 0.99))
        self.weight = weight
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _domain_loss(self, probabilities: torch.Tensor, *, is_source: bool) -> torch.Tensor:
        scores = self.discriminator(probabilities)
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, float(is_source)))

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        assert target is not None and source.labels is not None  # uses_target; source batches are labelled
        source_logits = student(pixel_values=source.pixel_values).logits
        supervised = F.cross_entropy(
            F.interpolate(source_logits, size=source.labels.shape[-2:], mode="bilinear", align_corners=False),
            source.labels, ignore_index=IGNORE)
        target_probabilities = student(pixel_values=target.pixel_values).logits.softmax(dim=1)
        self.discriminator.requires_grad_(False)
        fool = self._domain_loss(target_probabilities, is_source=True)
        self._pending = (source_logits.detach().softmax(dim=1), target_probabilities.detach())
        return StepLoss(supervised + self.weight * fool, loss_parts(ce=supervised, adv=fool))

    def after_step(self, student: nn.Module) -> None:
        assert self._pending is not None  # set by this step's loss
        source_probabilities, target_probabilities = self._pending
        self.discriminator.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = (self._domain_loss(source_probabilities, is_source=True)
                + self._domain_loss(target_probabilities, is_source=False)) / 2
        loss.backward()
        self.optimizer.step()
        self._pending = None

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


def low_frequency_swap(source: torch.Tensor, target: torch.Tensor, *, beta: float) -> torch.Tensor:
    """FDA's image translation: ``source`` with the amplitude of ``target`` in the central
    ``2·⌊β·min(H, W)⌋``-wide square of the centred spectrum, per channel; the phase stays the source's."""
    height, width = source.shape[-2:]
    half = int(beta * min(height, width))
    if half == 0:
        return source
    source_spectrum = torch.fft.fftshift(torch.fft.fft2(source), dim=(-2, -1))
    target_amplitude = torch.fft.fftshift(torch.fft.fft2(target), dim=(-2, -1)).abs()
    amplitude, phase = source_spectrum.abs(), source_spectrum.angle()
    top, left = height // 2 - half, width // 2 - half
    amplitude[..., top:top + 2 * half, left:left + 2 * half] = target_amplitude[..., top:top + 2 * half, left:left + 2 * half]
    swapped = torch.polar(amplitude, phase)
    return torch.fft.ifft2(torch.fft.ifftshift(swapped, dim=(-2, -1))).real


class FourierAdaptation(Strategy):
    """FDA: source cross-entropy on source images restyled with a target image's low frequencies."""

    def __init__(self, *, beta: float) -> None:
        self.beta = beta

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        assert target is not None  # uses_target
        pairing = torch.randperm(len(target.pixel_values), generator=generator).to(target.pixel_values.device)
        restyled = low_frequency_swap(source.pixel_values, target.pixel_values[pairing], beta=self.beta)
        total = source_loss(student, Batch(pixel_values=restyled, labels=source.labels))
        return StepLoss(total, loss_parts(ce=total))


STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "supervised": Supervised, "entropy": EntropyMinimisation, "mean_teacher_mix": MeanTeacherMix,
    "adversarial": OutputAdversarial, "fourier": FourierAdaptation,
}


def make_strategy(name: str, student: nn.Module, options: dict[str, float]) -> Strategy:
    """The strategy called ``name`` with its options (see :data:`STRATEGY_NAMES`)."""
    if name not in STRATEGY_CLASSES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")
    return STRATEGY_CLASSES[name].create(student, options)
STRATEGY_NAMES = tuple(STRATEGY_CLASSES)


def uses_target_images(name: str) -> bool:
    """Whether the strategy called ``name`` trains on unlabelled target (dusk) images."""
    return STRATEGY_CLASSES[name].uses_target
