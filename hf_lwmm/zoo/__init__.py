"""A CamVid day→dusk zoo of small SegFormers for merging experiments (``scripts/build_zoo.py``).

No ImageNet weights are available offline, so the common pretraining that model merging assumes is
made here: a ``base`` trained with labels on CamVid ``day/train`` from a seeded random
initialisation.  Every other model is a fine-tune of that base using labelled day frames and
unlabelled ``dusk/train`` frames (source-only, MinEnt, DACS-style mean teacher with ClassMix,
AdaptSegNet-style output-space adversarial), plus four evenly spaced checkpoints of the mean-teacher
run, a model with pole/sign/fence folded into one ``object`` class and one with a 256-wide head.

Choices, sized for 2 shared CPU cores and a 60-minute budget (see :mod:`hf_lwmm.zoo.model` for the
model size and :mod:`hf_lwmm.zoo.plan` for the step counts):

* model: MiT-B0 encoder + 128-wide head, 3.45 M parameters (the head-width variant: 3.72 M);
* resolution: frames at 240×180 (half of CamVid's 480×360; the saved image processor resizes to it),
  training on random 160×160 crops of frames rescaled ×0.9–1.5, batch 8; scores at 480×360;
* layout: :mod:`~hf_lwmm.zoo.data` (frames in memory, augmentation) → :mod:`~hf_lwmm.zoo.strategies`
  (losses) → :mod:`~hf_lwmm.zoo.train` (seeded, resumable loop) → :mod:`~hf_lwmm.zoo.evaluate`
  (mIoU through :mod:`hf_lwmm.evaluation.confusion`) → :mod:`~hf_lwmm.zoo.export` (Hub folder + card),
  orchestrated by :mod:`~hf_lwmm.zoo.build`.
"""

from hf_lwmm.zoo.build import BuildSettings, ZooEntry, build_zoo, zoo_table

__all__ = ["BuildSettings", "ZooEntry", "build_zoo", "zoo_table"]
