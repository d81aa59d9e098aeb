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
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hf_lwmm.zoo.data import IGNORE, Batch


def logits_at_input_size(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """SegFormer predicts at 1/4 resolution; losses compare at the crop's full size."""
    logits = model(pixel_values=pixel_values).logits
    return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def source_loss(model: nn.Module, source: Batch) -> torch.Tensor:
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

    @abstractmethod
    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
        """The segmenter's loss for one step."""

    def after_step(self, student: nn.Module) -> None:
        """Work after the segmenter's optimiser step (teacher EMA, discriminator update)."""

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
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

    def __init__(self, student: nn.Module, *, ema: float, confidence: float, weight: float) -> None:
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.ema = ema
        self.confidence = confidence
        self.weight = weight

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
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

    def state_dict(self) -> dict[str, object]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
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

    def __init__(self, student: nn.Module, *, weight: float, discriminator_width: int, discriminator_lr: float) -> None:
        device = next(student.parameters()).device
        self.discriminator = output_discriminator(student.config.num_labels, width=discriminator_width).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=discriminator_lr, betas=(0.9, 0.99))
        self.weight = weight
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _domain_loss(self, probabilities: torch.Tensor, *, is_source: bool) -> torch.Tensor:
        scores = self.discriminator(probabilities)
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, float(is_source)))

    def loss(self, student: nn.Module, source: Batch, target: Batch | None, generator: torch.Generator) -> StepLoss:
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
        source_probabilities, target_probabilities = self._pending
        self.discriminator.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = (self._domain_loss(source_probabilities, is_source=True)
                + self._domain_loss(target_probabilities, is_source=False)) / 2
        loss.backward()
        self.optimizer.step()
        self._pending = None

    def state_dict(self) -> dict[str, object]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_strategy(name: str, student: nn.Module, options: dict[str, float]) -> Strategy:
    """The strategy called ``name`` with its options (see :data:`STRATEGY_NAMES`)."""
    if name == "supervised":
        return Supervised()
    if name == "entropy":
        return EntropyMinimisation(**options)
    if name == "mean_teacher_mix":
        return MeanTeacherMix(student, **options)
    if name == "adversarial":
        return OutputAdversarial(student, **options)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")


STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "supervised": Supervised, "entropy": EntropyMinimisation, "mean_teacher_mix": MeanTeacherMix, "adversarial": OutputAdversarial,
}
STRATEGY_NAMES = tuple(STRATEGY_CLASSES)


def uses_target_images(name: str) -> bool:
    """Whether the strategy called ``name`` trains on unlabelled target (dusk) images."""
    return STRATEGY_CLASSES[name].uses_target
