"""The training loop shared by every zoo model: seeded per step, resumable, with a progress bar.

Each step reseeds torch from ``(seed, step)`` and draws its batches from a generator seeded the same
way, so the weights after step ``n`` depend only on the state after step ``n - 1``: a run resumed from
its saved state ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import SegformerForSemanticSegmentation

from hf_lwmm.zoo.data import Augmentation, Batch, FrameSet, LabelSet, Normalisation, sample_batch
from hf_lwmm.zoo.strategies import StepLoss, Strategy, make_strategy


@dataclass(frozen=True)
class TrainingRecipe:
    """Everything that decides a run's weights besides its starting point (saved in each model card)."""

    strategy: str
    steps: int
    learning_rate: float
    seed: int
    augmentation: Augmentation
    strategy_options: dict[str, float]
    batch_size: int = 8
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    checkpoints: int = 1
    #: the decode head's learning rate over the encoder's (the UDA recipe of DAFormer and its successors: 10)
    head_lr_multiplier: float = 1.0


@dataclass(frozen=True)
class TrainingData:
    """Labelled source frames, unlabelled target frames, the label set and the processor normalisation."""

    source: FrameSet
    target: FrameSet
    label_set: LabelSet
    normalisation: Normalisation


#: called with (model, checkpoint number starting at 1, step) at each evenly spaced checkpoint
CheckpointCallback = Callable[[SegformerForSemanticSegmentation, int, int], None]


def learning_rate_at(step: int, recipe: TrainingRecipe) -> float:
    """The encoder's learning rate: linear warm-up, then linear ("poly 1") decay to zero at the last step."""
    warmup = max(1, round(recipe.warmup_fraction * recipe.steps))
    if step < warmup:
        return recipe.learning_rate * (step + 1) / warmup
    return recipe.learning_rate * max(0.0, (recipe.steps - step) / max(1, recipe.steps - warmup))


def checkpoint_steps(recipe: TrainingRecipe) -> list[int]:
    """Evenly spaced steps (the last one is the end of the run) after which a checkpoint is saved."""
    return [round(recipe.steps * k / recipe.checkpoints) for k in range(1, recipe.checkpoints + 1)]


def step_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed for one (run seed, step, stream), independent of Python's hash randomisation."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training (the caller's setting is restored after); on CUDA a few ops
    without a deterministic kernel (bilinear upsampling backward) only warn."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _save_state(path: Path, state: dict[str, object]) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def train(model: SegformerForSemanticSegmentation, *, recipe: TrainingRecipe, data: TrainingData, device: torch.device,
          state_path: Path, on_checkpoint: CheckpointCallback, description: str, state_every: int = 25) -> None:
    """Runs ``recipe`` on ``model`` in place, resuming from ``state_path`` when it holds a saved state."""
    with deterministic_kernels(device):
        _train(model, recipe=recipe, data=data, device=device, state_path=state_path, on_checkpoint=on_checkpoint,
               description=description, state_every=state_every)


def _train(model: SegformerForSemanticSegmentation, *, recipe: TrainingRecipe, data: TrainingData, device: torch.device,
           state_path: Path, on_checkpoint: CheckpointCallback, description: str, state_every: int) -> None:
    model.to(device).train()  # type: ignore[arg-type]  # transformers' @wraps(Module.to) types `self` as the first argument
    strategy = make_strategy(recipe.strategy, model, recipe.strategy_options)
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    start = _resume(state_path, recipe=recipe, model=model, optimizer=optimizer, strategy=strategy, device=device)
    saves = checkpoint_steps(recipe)
    progress = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc=description, unit="step", leave=False)
    for step in progress:
        step_loss = _training_step(step, model=model, strategy=strategy, optimizer=optimizer, recipe=recipe,
                                   data=data, device=device)
        progress.set_postfix({key: f"{value:.3f}" for key, value in step_loss.parts.items()})
        done = step + 1
        if done in saves:
            model.eval()
            on_checkpoint(model, saves.index(done) + 1, done)
            model.train()
        if done % state_every == 0 and done < recipe.steps:
            _save_state(state_path, {"recipe": repr(recipe), "step": done, "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "strategy": strategy.state_dict()})
    progress.close()
    state_path.unlink(missing_ok=True)
    model.eval()


def parameter_groups(model: SegformerForSemanticSegmentation, recipe: TrainingRecipe) -> list[dict[str, object]]:
    """The encoder and the decode head as two optimiser groups; ``lr_scale`` is the head's multiplier."""
    head = [parameter for name, parameter in model.named_parameters() if name.startswith("decode_head.")]
    head_ids = {id(parameter) for parameter in head}
    encoder = [parameter for parameter in model.parameters() if id(parameter) not in head_ids]
    return [{"params": encoder, "lr_scale": 1.0}, {"params": head, "lr_scale": recipe.head_lr_multiplier}]


def _resume(state_path: Path, *, recipe: TrainingRecipe, model: SegformerForSemanticSegmentation,
            optimizer: torch.optim.Optimizer, strategy: Strategy, device: torch.device) -> int:
    """Loads a state saved by the same recipe and returns its step; 0 when there is none to resume."""
    if not state_path.is_file():
        return 0
    state = torch.load(state_path, map_location=device, weights_only=True)
    if state.get("recipe") != repr(recipe):  # left by a run with other settings (e.g. --steps-scale)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    strategy.load_state_dict(state["strategy"])
    return int(state["step"])


def _training_step(step: int, *, model: SegformerForSemanticSegmentation, strategy: Strategy,
                   optimizer: torch.optim.Optimizer, recipe: TrainingRecipe, data: TrainingData,
                   device: torch.device) -> StepLoss:
    """One optimiser step, with every random choice seeded from ``(recipe.seed, step)``.

    The source batch, the target batch and the strategy's own draws (e.g. ClassMix) come from three
    separate streams, so runs with one seed see the same labelled batches whatever their strategy:
    a UDA run differs from source-only training by its target term alone.
    """
    torch.manual_seed(step_seed(recipe.seed, step, "torch"))  # dropout and stochastic depth
    def stream(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(step_seed(recipe.seed, step, name))

    def batch(frames: FrameSet, label_set: LabelSet | None, name: str) -> Batch:
        return _to(sample_batch(frames, label_set=label_set, generator=stream(name), batch_size=recipe.batch_size,
                                augmentation=recipe.augmentation, normalisation=data.normalisation), device)

    source = batch(data.source, data.label_set, "source")
    target = batch(data.target, None, "target") if strategy.uses_target else None
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, recipe) * group["lr_scale"]
    optimizer.zero_grad(set_to_none=True)
    step_loss = strategy.loss(model, source, target, stream("strategy"))
    step_loss.total.backward()
    optimizer.step()
    strategy.after_step(model)
    return step_loss


def _to(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device`` (labels stay None for unlabelled target batches)."""
    return Batch(pixel_values=batch.pixel_values.to(device),
                 labels=batch.labels.to(device) if batch.labels is not None else None)
