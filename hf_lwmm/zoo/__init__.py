"""A CamVid day→dusk zoo of small SegFormers for merging experiments (``scripts/build_zoo.py``).

No ImageNet weights are available offline, so the common pretraining that model merging assumes is
made here: a ``base`` trained with labels on every CamVid day frame but ``day/test`` (train + val),
from a seeded random initialisation, with random rescale/crop, flip and photometric jitter.  Every
other model is a fine-tune of that base under one UDA recipe (same labelled batches, same
augmentation, the decode head's learning rate 10× the encoder's) and differs by its target term on
unlabelled ``dusk/train`` frames: source-only (none), MinEnt, DACS-style mean teacher with ClassMix
(four evenly spaced checkpoints kept), AdaptSegNet-style output-space adversarial and FDA; plus a
model with pole/sign/fence folded into one ``object`` class and one with a 256-wide head.  A UDA
run that does not beat source-only on dusk/val is tuned on dusk/val (its next setting is tried).

Choices, sized for 2 shared CPU cores and a 90-minute budget (see :mod:`hf_lwmm.zoo.model` for the
model size and :mod:`hf_lwmm.zoo.plan` for the step counts):

* model: MiT-B0 encoder + 128-wide head, 3.45 M parameters (the head-width variant: 3.72 M);
* resolution: frames at 240×180 (half of CamVid's 480×360; the saved image processor resizes to it),
  training on random 160×160 crops of frames rescaled ×0.75–1.75, batch 8; scores at 480×360;
* reproducible: seeded per step, deterministic kernels; ``zoo.json`` records each model's weight
  sha256, training recipe, device and the code commit;
* layout: :mod:`~hf_lwmm.zoo.data` (frames in memory, augmentation) → :mod:`~hf_lwmm.zoo.strategies`
  (losses) → :mod:`~hf_lwmm.zoo.train` (seeded, resumable loop) → :mod:`~hf_lwmm.zoo.evaluate`
  (mIoU through :mod:`hf_lwmm.evaluation.confusion`) → :mod:`~hf_lwmm.zoo.export` (Hub folder + card),
  orchestrated by :mod:`~hf_lwmm.zoo.build`; :mod:`~hf_lwmm.zoo.publish` pushes a built zoo.
"""

from hf_lwmm.zoo.build import BuildSettings, ZooEntry, build_zoo, zoo_table

__all__ = ["BuildSettings", "ZooEntry", "build_zoo", "zoo_table"]
