"""Which models the zoo holds and how each is trained (steps at ``--steps-scale 1``).

The base is the zoo's "pretraining": supervised on every labelled day frame except ``day/test``
(train + val), from random initialisation (no ImageNet weights offline), with the augmentation a
segmentation model needs (random rescale and crop, flip, photometric jitter).  It gets most of the
budget because every other model starts from it and stays close to it, as the paper's premise asks.

The photometric jitter (brightness and contrast ×[0.8, 1.2], gamma in 2^[-0.2, 0.2]) has about the
strength of the usual segmentation pipelines (mmseg's ``PhotoMetricDistortion`` shifts brightness by
up to ±32/255); it is not a dusk simulator.
A jitter strong enough to halve the brightness (strength 0.5, tried in the previous build) already
covers CamVid's day→dusk shift (dusk frames are half as bright): the base then scored higher on dusk/val
than on day/test and no UDA method had a gap left to close — designing the source augmentation from
the target domain is itself adaptation, and it leaves nothing to compare.

Every fine-tune follows one UDA recipe: the same labelled day frames with the same augmentation and
the same seed (so the same source batches, see :func:`hf_lwmm.zoo.train._training_step`), the encoder
at a tenth of the decode head's learning rate, and only its target term differs.  A UDA strategy
must beat ``source-only`` on dusk/val; when one does not, the build tries its next setting
(:attr:`ModelSpec.alternatives`, chosen on dusk/val only) and ``zoo.json`` records every try.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hf_lwmm.zoo.data import Augmentation
from hf_lwmm.zoo.model import DEFAULT_DECODER_WIDTH
from hf_lwmm.zoo.train import TrainingRecipe, checkpoint_steps

BASE_NAME = "base"
SOURCE_ONLY = "source-only"
COARSE_FOLD = ("pole", "sign_symbol", "fence")
COARSE_CLASS = "object"
#: strength of every run's photometric jitter (see :class:`~hf_lwmm.zoo.data.Augmentation`)
PHOTOMETRIC = 0.2
#: encoder learning rate of every fine-tune; the decode head's is ``HEAD_LR_MULTIPLIER`` times larger
FINE_TUNE_LR = 3e-4
HEAD_LR_MULTIPLIER = 10.0


@dataclass(frozen=True)
class ModelSpec:
    """One zoo run: its name (= folder), role, one-line summary, recipe, classes and head width.

    ``alternatives``: other strategy options tried in order when the run does not beat
    ``source-only`` on dusk/val (UDA strategies only).
    """

    name: str
    role: str
    summary: str
    recipe: TrainingRecipe
    coarse_classes: bool = False
    decoder_hidden_size: int = DEFAULT_DECODER_WIDTH
    alternatives: tuple[dict[str, float], ...] = field(default_factory=tuple)

    @property
    def must_beat_source_only(self) -> bool:
        return self.role == "strategy" and self.name != SOURCE_ONLY

    def tries(self) -> list[TrainingRecipe]:
        """The recipe, then one per alternative setting of its strategy."""
        return [self.recipe, *(replace(self.recipe, strategy_options=options) for options in self.alternatives)]

    def folder_names(self) -> list[str]:
        """Checkpoint folders ``<name>-step<N>`` in order; the last checkpoint is the run's own folder."""
        steps = checkpoint_steps(self.recipe)
        return [f"{self.name}-step{step:04d}" for step in steps[:-1]] + [self.name]


def _scaled(recipe: TrainingRecipe, scale: float) -> TrainingRecipe:
    return replace(recipe, steps=max(recipe.checkpoints, round(recipe.steps * scale)))


def zoo_plan(*, seed: int, steps_scale: float, crop: tuple[int, int]) -> tuple[ModelSpec, list[ModelSpec]]:
    """The base and the fine-tunes that start from it, with step counts multiplied by ``steps_scale``."""
    augmentation = Augmentation(crop=crop, scale_range=(0.75, 1.75), photometric=PHOTOMETRIC)

    def fine_tune(strategy: str, steps: int, checkpoints: int = 1, **options: float) -> TrainingRecipe:
        return _scaled(TrainingRecipe(strategy=strategy, steps=steps, learning_rate=FINE_TUNE_LR, seed=seed + 1,
                                      augmentation=augmentation, strategy_options=options, checkpoints=checkpoints,
                                      head_lr_multiplier=HEAD_LR_MULTIPLIER), steps_scale)

    base = ModelSpec(BASE_NAME, "base", "Supervised on every labelled CamVid day frame but day/test, from random initialisation.",
                     _scaled(TrainingRecipe(strategy="supervised", steps=2000, learning_rate=1e-3, seed=seed,
                                            augmentation=augmentation, strategy_options={}), steps_scale))
    fine_tunes = [
        ModelSpec(SOURCE_ONLY, "strategy", "Source-only fine-tune: the UDA recipe without a target term.",
                  fine_tune("supervised", 200)),
        ModelSpec("minent", "strategy", "MinEnt (ADVENT-style) entropy minimisation on unlabelled dusk frames.",
                  fine_tune("entropy", 200, weight=0.5), alternatives=({"weight": 0.2}, {"weight": 1.0})),
        ModelSpec("mean-teacher", "strategy",
                  "DACS-style self-training: EMA teacher pseudo-labels, ClassMix day→dusk; 4 evenly spaced checkpoints.",
                  fine_tune("mean_teacher_mix", 200, checkpoints=4, ema=0.99, confidence=0.9, weight=1.0),
                  alternatives=({"ema": 0.99, "confidence": 0.968, "weight": 0.5},
                                {"ema": 0.95, "confidence": 0.9, "weight": 1.0})),
        ModelSpec("adversarial", "strategy", "AdaptSegNet-style output-space adversarial adaptation to dusk frames.",
                  fine_tune("adversarial", 200, weight=0.005, discriminator_width=32, discriminator_lr=1e-4),
                  alternatives=({"weight": 0.001, "discriminator_width": 32, "discriminator_lr": 1e-4},
                                {"weight": 0.02, "discriminator_width": 32, "discriminator_lr": 1e-4})),
        ModelSpec("fourier", "strategy", "FDA: day frames restyled with dusk frames' low-frequency amplitude spectrum.",
                  fine_tune("fourier", 200, beta=0.05), alternatives=({"beta": 0.02}, {"beta": 0.09})),
        ModelSpec("coarse-objects", "class-set variant",
                  f"Source-only with {', '.join(COARSE_FOLD)} folded into one '{COARSE_CLASS}' class (9 classes).",
                  fine_tune("supervised", 200), coarse_classes=True),
        ModelSpec("head-256", "head-width variant",
                  "Source-only with a 256-wide decode head (SegFormer-B0's own width), new head.",
                  fine_tune("supervised", 200), decoder_hidden_size=256),
    ]
    return base, fine_tunes
