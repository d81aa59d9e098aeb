"""The one place that loads a model folder as a transformers segmentation model with its image processor.

Layering: a bottom module (imports only :mod:`hf_lwmm.errors`); the Fisher method, the evaluation runner
and the demo load models through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lwmm.errors import LwmmError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_segmentation_model(folder: Path, *, label: str) -> tuple[PreTrainedModel, Any]:
    """``AutoModelForSemanticSegmentation`` (in eval mode) and ``AutoImageProcessor`` of ``folder``; one line when either fails."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise LwmmError(f"model {label}: cannot be loaded as a semantic-segmentation model ({str(err).splitlines()[0]})") from None
    return model, processor
