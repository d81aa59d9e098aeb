"""Which models the zoo holds and how each is trained (steps at ``--steps-scale 1``).

Step counts fit the whole zoo in under an hour on 2 CPU cores: the base gets the largest share
because everything else starts from it; a UDA step costs about two supervised steps (a source and a
target batch), so UDA fine-tunes get fewer steps.  Measured on the shared 2-core machine (other jobs
running): base 14 min (800 steps), each fine-tune 1.6–5.6 min, scoring ≈ 15 s per model, whole zoo
33.5 min.  Only ``source-only`` and the class/head variants use photometric augmentation, so the UDA
runs show what their target term alone does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hf_lwmm.zoo.data import Augmentation
from hf_lwmm.zoo.model import DEFAULT_DECODER_WIDTH
from hf_lwmm.zoo.train import TrainingRecipe, checkpoint_steps

BASE_NAME = "base"
COARSE_FOLD = ("pole", "sign_symbol", "fence")
COARSE_CLASS = "object"


@dataclass(frozen=True)
class ModelSpec:
    """One zoo run: its name (= folder), role, one-line summary, recipe, classes and head width."""

    name: str
    role: str
    summary: str
    recipe: TrainingRecipe
    coarse_classes: bool = False
    decoder_hidden_size: int = DEFAULT_DECODER_WIDTH

    def folder_names(self) -> list[str]:
        """Checkpoint folders ``<name>-step<N>`` in order; the last checkpoint is the run's own folder."""
        steps = checkpoint_steps(self.recipe)
        return [f"{self.name}-step{step:04d}" for step in steps[:-1]] + [self.name]


def _scaled(recipe: TrainingRecipe, scale: float) -> TrainingRecipe:
    return replace(recipe, steps=max(recipe.checkpoints, round(recipe.steps * scale)))


def zoo_plan(*, seed: int, steps_scale: float, crop: tuple[int, int]) -> tuple[ModelSpec, list[ModelSpec]]:
    """The base and the fine-tunes that start from it, with step counts multiplied by ``steps_scale``."""
    geometric = Augmentation(crop=crop)
    photometric = replace(geometric, photometric=0.5)

    def recipe(strategy: str, steps: int, learning_rate: float, offset: int, augmentation: Augmentation = geometric,
               checkpoints: int = 1, **options: float) -> TrainingRecipe:
        return _scaled(TrainingRecipe(strategy=strategy, steps=steps, learning_rate=learning_rate, seed=seed + offset,
                                      augmentation=augmentation, strategy_options=options, checkpoints=checkpoints),
                       steps_scale)

    base = ModelSpec(BASE_NAME, "base", "Supervised on labelled CamVid day frames from random initialisation.",
                     recipe("supervised", 800, 1e-3, 0))
    fine_tunes = [
        ModelSpec("source-only", "strategy", "Source-only fine-tune on day frames with strong photometric augmentation (another seed).",
                  recipe("supervised", 200, 3e-4, 1, photometric)),
        ModelSpec("minent", "strategy", "MinEnt (ADVENT-style) entropy minimisation on unlabelled dusk frames.",
                  recipe("entropy", 150, 3e-4, 2, weight=0.5)),
        ModelSpec("mean-teacher", "strategy", "DACS-style self-training: EMA teacher pseudo-labels, ClassMix day→dusk; 4 checkpoints.",
                  recipe("mean_teacher_mix", 160, 3e-4, 3, checkpoints=4, ema=0.99, confidence=0.9, weight=1.0)),
        ModelSpec("adversarial", "strategy", "AdaptSegNet-style output-space adversarial adaptation to dusk frames.",
                  recipe("adversarial", 150, 3e-4, 4, weight=0.01, discriminator_width=32, discriminator_lr=1e-4)),
        ModelSpec("coarse-objects", "class-set variant",
                  f"Source-only with {', '.join(COARSE_FOLD)} folded into one '{COARSE_CLASS}' class (9 classes).",
                  recipe("supervised", 200, 3e-4, 5, photometric), coarse_classes=True),
        ModelSpec("head-256", "head-width variant", "Source-only with a 256-wide decode head (SegFormer-B0's own width), new head.",
                  recipe("supervised", 200, 6e-4, 6, photometric), decoder_hidden_size=256),
    ]
    return base, fine_tunes
