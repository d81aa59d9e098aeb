"""Prefix alignment across model classes, and loading merged models with stock transformers."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation, GLPNConfig, GLPNForDepthEstimation, SegformerModel, pipeline

from hf_lwmm.recipe import RunOptions
from hf_lwmm import MergeRecipe, merge
from hf_lwmm.align import TensorStatus, align, canonical_name
from hf_lwmm.cli import main
from hf_lwmm.io import open_weights
from hf_lwmm.refs import resolve

from helpers import TINY_ENCODER, make_tiny_segformer, tiny_config

QUIET = RunOptions(progress=False)

ENCODER_KEY = "encoder.block.0.0.mlp.dense1.weight"


def _glpn(folder, seed=5):
    torch.manual_seed(seed)
    GLPNForDepthEstimation(GLPNConfig(**TINY_ENCODER, decoder_hidden_size=16)).save_pretrained(folder)
    return folder


def _bare(folder, seed=6):
    torch.manual_seed(seed)
    SegformerModel(tiny_config()).save_pretrained(folder)
    return folder


def test_canonical_names():
    assert canonical_name("segformer.encoder.block.0.0.x") == "encoder.block.0.0.x"
    assert canonical_name("glpn.encoder.layer_norm.1.weight") == "encoder.layer_norm.1.weight"
    assert canonical_name("encoder.block.0.0.x") == "encoder.block.0.0.x"
    assert canonical_name("decode_head.classifier.weight") == "decode_head.classifier.weight"


def test_semantic_glpn_and_bare_encoders_align(tmp_path):
    folders = [make_tiny_segformer(tmp_path / "seg"), _glpn(tmp_path / "glpn"), _bare(tmp_path / "bare")]
    models = [resolve(str(f)) for f in folders]
    sources = [open_weights(m.folder, label=str(m.ref)) for m in models]
    alignment = align(sources, [m.model_type for m in models], anchor=0)
    encoder = [k for k in alignment.tensors if k.startswith("encoder.")]
    assert encoder and set(alignment.shared) == set(encoder)
    tensor = alignment.tensors[ENCODER_KEY]
    assert tensor.names == {0: f"segformer.{ENCODER_KEY}", 1: f"glpn.{ENCODER_KEY}", 2: ENCODER_KEY}
    assert alignment.tensors["decode_head.classifier.weight"].status is TensorStatus.PARTIAL
    assert alignment.only_in(1) and all(key.startswith(("decoder.", "head.")) for key in alignment.only_in(1))


def test_merge_semantic_with_depth_model_keeps_the_semantic_head(tmp_path):
    seg, glpn = make_tiny_segformer(tmp_path / "seg"), _glpn(tmp_path / "glpn")
    merge(MergeRecipe(models=[str(seg), str(glpn)], method="isotropic"), tmp_path / "out", QUIET)
    merged, a, b = load_file(tmp_path / "out/model.safetensors"), load_file(seg / "model.safetensors"), load_file(glpn / "model.safetensors")
    assert set(merged) == set(a)
    torch.testing.assert_close(merged[f"segformer.{ENCODER_KEY}"], (a[f"segformer.{ENCODER_KEY}"] + b[f"glpn.{ENCODER_KEY}"]) / 2)
    assert torch.equal(merged["decode_head.linear_fuse.weight"], a["decode_head.linear_fuse.weight"])


def test_from_pretrained_and_pipeline_load_the_output(tiny_models, tmp_path):
    merge(MergeRecipe(models=[str(m) for m in tiny_models]), tmp_path / "out", QUIET)
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    merged = load_file(tmp_path / "out/model.safetensors")
    # transformers renames tensors in memory; the file's classifier must be the loaded one
    torch.testing.assert_close(model.decode_head.classifier.weight.detach(), merged["decode_head.classifier.weight"])
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "out"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    outputs = segmenter(image)
    assert outputs and all(o["mask"].size == (32, 32) for o in outputs)
    assert {o["label"] for o in outputs} <= {f"class_{i}" for i in range(5)}


def test_align_command_prints_the_report(tmp_path, capsys):
    seg, other = make_tiny_segformer(tmp_path / "seg"), make_tiny_segformer(tmp_path / "other", num_labels=3)
    assert main(["align", str(seg), str(other)]) == 0
    report = capsys.readouterr().out
    assert "122 shared, 2 shape-mismatch, 0 not-in-every-model" in report
    assert "classifier" in report and "shape-mismatch weight [0][5, 16, 1, 1] vs [1][3, 16, 1, 1]" in report
    assert "block.3.0" in report.split("classifier")[0]
