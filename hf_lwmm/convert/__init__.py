"""Convert checkpoints of other libraries into stock transformers folders that merge like any Hub model.

:func:`convert_checkpoint` reads an mmsegmentation checkpoint (a local file or ``org/name[@revision]:path``
on the Hub) with ``torch.load(weights_only=True)``, converts it with :mod:`hf_lwmm.convert.mmseg` and
writes config, safetensors weights, preprocessor config and a card naming the source file and its
sha256, and a record (``lwmm_conversion.yaml``, which ``lwmm-hub push`` reads) into a staging folder
renamed into place only when complete.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hf_lwmm.convert.mmseg import Conversion, class_names, convert_state, read_checkpoint, select_weights
from hf_lwmm.errors import LwmmError
from hf_lwmm.hub import CONVERSION_NAME
from hf_lwmm.io.hashing import sha256_of
from hf_lwmm.io.output import check_output_folder, staged_folder
from hf_lwmm.refs import ModelRef, download_file

CARD_TEMPLATE = "mmseg_conversion.md"


@dataclass(frozen=True)
class ConvertedModel:
    """What a conversion wrote: the folder, whether it has the head, what was left out, and the source's identity."""

    output_dir: Path
    source: str
    sha256: str
    conversion: Conversion
    files: list[str]

    def summary(self) -> str:
        kind = "SegformerForSemanticSegmentation" if self.conversion.has_head else "encoder only (SegformerModel)"
        lines = [f"converted {self.source} → {self.output_dir} ({kind})", f"  source sha256 {self.sha256}"]
        if self.conversion.left_out:
            lines.append("  left out: " + "; ".join(self.conversion.left_out))
        return "\n".join(lines)


def convert_checkpoint(source: str, output_dir: str | Path, *, weights: str | None = None,
                       num_attention_heads: list[int] | None = None, id2label_file: Path | None = None,
                       token: str | bool | None = None, hub_repo: str | None = None) -> ConvertedModel:
    """Convert an mmseg checkpoint (``file.pth`` or ``org/name[@revision]:path/file.pth``) into ``output_dir``.

    ``hub_repo`` is where the folder will be pushed, so that the card's usage snippet names it.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, name="output_dir")  # a folder holding the checkpoint is not empty: refused too
    file, label = _source_file(source, token=token)
    digest = sha256_of(file)
    state, meta = read_checkpoint(file, label=label)
    selected, chosen, others = select_weights(state, weights, label=label)
    id2label = _read_id2label(id2label_file) if id2label_file is not None else class_names(meta)
    conversion = convert_state(selected, num_attention_heads=num_attention_heads, id2label=id2label, weights=chosen, label=label)
    conversion.left_out[:0] = others
    command = _command(source, output_dir, weights=weights, heads=num_attention_heads, id2label_file=id2label_file)
    with staged_folder(output_dir) as staging:
        _write_model(conversion, staging)
        written = {path.name: sha256_of(path) for path in sorted(staging.glob("*.safetensors"))}
        card_context = {"weights_sha256": written, "source": label, "sha256": digest, "command": command,
                        "repo_hint": hub_repo or output_dir.name,
                        "heads_origin": "given" if num_attention_heads else "MiT's published heads: not stored in checkpoints",
                        "labels_origin": f"from {id2label_file.name}" if id2label_file else "meta['CLASSES']"}
        _write_card(conversion, staging, output_dir.name, card_context)
        _write_record(conversion, staging, source=label, sha256=digest, command=command, weights_sha256=written)
        files = sorted(path.name for path in staging.iterdir())
    return ConvertedModel(output_dir, label, digest, conversion, files)


def _source_file(source: str, *, token: str | bool | None) -> tuple[Path, str]:
    """The checkpoint on disk and how to name it: the local path, or ``org/name@commit:path`` for a Hub file."""
    local = Path(source).expanduser()
    if local.is_file():
        return local, str(local)
    ref = ModelRef.parse(source)
    if ref.is_local:
        raise LwmmError(f"{source}: no such checkpoint file")
    file, commit = download_file(ref, token=token)
    return file, str(ModelRef(repo_id=ref.repo_id, revision=commit, subfolder=ref.subfolder))


def _read_id2label(path: Path) -> dict[int, str]:
    """``--id2label FILE``: a JSON list of class names or an object ``{"0": "road", …}``."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, list):
            data = dict(enumerate(data))
        id2label = {int(index): str(name) for index, name in data.items()}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as err:
        raise LwmmError(f"--id2label {path}: not a JSON list of class names nor an id → name object ({err.__class__.__name__})") from None
    if sorted(id2label) != list(range(len(id2label))):
        raise LwmmError(f"--id2label {path}: class ids must be 0…{len(id2label) - 1}")
    return id2label


def _write_model(conversion: Conversion, folder: Path) -> None:
    """Config, weights (written by transformers itself, so the folder is exactly what it loads) and preprocessor config."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, SegformerModel

    config = SegformerConfig(**conversion.config)
    model_class = SegformerForSemanticSegmentation if conversion.has_head else SegformerModel
    loaded: Any = model_class.from_pretrained(None, config=config, state_dict=conversion.tensors, output_loading_info=True)
    model, info = loaded
    problems = {kind: names for kind, names in info.items() if names and kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:  # the mapping and the config disagree: a bug, not a user error
        raise RuntimeError(f"converted tensors do not fit {model_class.__name__}: {problems}")
    model.save_pretrained(folder)
    SegformerImageProcessor().save_pretrained(folder)


def _write_card(conversion: Conversion, folder: Path, name: str, context: dict[str, Any]) -> None:
    from huggingface_hub import ModelCardData

    from hf_lwmm import __version__
    from hf_lwmm.card import render_card

    card_data = ModelCardData(library_name="transformers",
                              pipeline_tag="image-segmentation" if conversion.has_head else "image-feature-extraction",
                              tags=["segformer", "mmsegmentation", "lwmm-convert"])
    auto_class = "AutoModelForSemanticSegmentation" if conversion.has_head else "AutoModel"
    text = render_card(card_data, CARD_TEMPLATE, model_name=name, tool_version=__version__, has_head=conversion.has_head,
                       auto_class=auto_class, weights=conversion.weights, config=conversion.config, left_out=conversion.left_out,
                       **context)
    (folder / "README.md").write_text(text, encoding="utf-8")


def _write_record(conversion: Conversion, folder: Path, *, source: str, sha256: str, command: str,
                  weights_sha256: dict[str, str]) -> None:
    """``lwmm_conversion.yaml``: the source and its sha256, what was converted and left out, and the written weights' sha256."""
    from hf_lwmm import __version__

    record = {"lwmm_version": __version__, "source": source, "sha256": sha256, "weights": conversion.weights or None,
              "architecture": conversion.config["architectures"][0], "left_out": conversion.left_out, "command": command,
              "weights_sha256": weights_sha256}
    (folder / CONVERSION_NAME).write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))


def _command(source: str, output_dir: Path, *, weights: str | None, heads: list[int] | None, id2label_file: Path | None) -> str:
    words = ["lwmm-hub", "convert", source, "--output", output_dir.name]
    if weights:
        words += ["--weights", weights]
    if heads:
        words += ["--num-attention-heads", ",".join(map(str, heads))]
    if id2label_file:
        words += ["--id2label", str(id2label_file)]
    return shlex.join(words)
