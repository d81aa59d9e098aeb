"""``lwmm-hub convert``: mmsegmentation checkpoints built here by mmseg's naming rules → stock transformers folders."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import make_tiny_segformer
from hub_server import HubServer, hub  # noqa: F401  (hub: fixture)
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, SegformerForSemanticSegmentation

from hf_lwmm.cli import main
from hf_lwmm.io import sha256_of

HEADS = "1,2,3,4"  # the tiny models' heads (MiT's 1,2,5,8 do not divide 24 channels)
CLASSES = ("road", "sidewalk", "building", "wall", "fence")

#: transformers file name → mmseg 0.x name, from NVlabs/SegFormer's mix_transformer.py and segformer_head.py
#: (DAFormer, HRDA and MIC copy them); ``{s}`` is the 1-based stage. ``kv`` is fused in build_mmseg_state.
MMSEG_NAMES = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.proj\.", "backbone.patch_embed{s}.proj."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", "backbone.patch_embed{s}.norm."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", "backbone.norm{s}."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.layer_norm_1\.", "backbone.block{s}.{j}.norm1."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.layer_norm_2\.", "backbone.block{s}.{j}.norm2."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.query\.", "backbone.block{s}.{j}.attn.q."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.sr\.", "backbone.block{s}.{j}.attn.sr."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.layer_norm\.", "backbone.block{s}.{j}.attn.norm."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.output\.dense\.", "backbone.block{s}.{j}.attn.proj."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dense1\.", "backbone.block{s}.{j}.mlp.fc1."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.", "backbone.block{s}.{j}.mlp.dwconv.dwconv."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dense2\.", "backbone.block{s}.{j}.mlp.fc2."),
    (r"^decode_head\.linear_c\.(\d)\.proj\.", "decode_head.linear_c{s}.proj."),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
]
#: DAFormer's DAFormerHead (no stock transformers class)
DAFORMER_HEAD = {"decode_head.embed_layers.0.proj.weight": (16, 8), "decode_head.embed_layers.0.proj.bias": (16,),
                 "decode_head.fuse_layer.bottleneck.conv.weight": (16, 64, 3, 3), "decode_head.linear_pred.weight": (5, 16, 1, 1)}


def build_mmseg_state(folder: Path, *, loop_head: bool = False) -> dict[str, torch.Tensor]:
    """The state dict mmseg would hold for the SegFormer saved in ``folder``.

    ``loop_head``: DAFormer's SegFormerHead, whose ``linear_c`` is a ModuleDict ``"0"…"3"`` and whose fuse conv
    reads the projections shallowest first (NVlabs' and transformers' read them deepest first).
    """
    tensors = load_file(folder / "model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if ".attention.self.key." in name or ".attention.self.value." in name:
            continue
        for pattern, template in MMSEG_NAMES:
            match = re.match(pattern, name)
            if match:
                stage = int(match.group(1)) + 1 if match.re.groups else 0
                block = match.group(2) if match.re.groups > 1 else ""
                state[template.format(s=stage, j=block) + name[match.end():]] = tensor
                break
        else:
            raise AssertionError(f"no mmseg name for {name}")
    for name in [n for n in tensors if ".attention.self.key." in n]:  # kv = Linear(dim, 2 dim): key rows, then value rows
        stage, block = re.match(r"^segformer\.encoder\.block\.(\d)\.(\d+)\.", name).groups()
        kind = name.rsplit(".", 1)[1]
        state[f"backbone.block{int(stage) + 1}.{block}.attn.kv.{kind}"] = torch.cat(
            [tensors[name], tensors[name.replace(".key.", ".value.")]])
    state["decode_head.conv_seg.weight"] = torch.zeros(5, 16, 1, 1)  # BaseDecodeHead's, unused by the SegFormer head
    state["decode_head.conv_seg.bias"] = torch.zeros(5)
    if loop_head:
        for stage in range(4):
            for kind in ("weight", "bias"):
                state[f"decode_head.linear_c.{stage}.proj.{kind}"] = state.pop(f"decode_head.linear_c{stage + 1}.proj.{kind}")
        fuse = state["decode_head.linear_fuse.conv.weight"]
        state["decode_head.linear_fuse.conv.weight"] = torch.cat(fuse.chunk(4, dim=1)[::-1], dim=1)
    return state


def mmseg_head_logits(state: dict[str, torch.Tensor], features: tuple[torch.Tensor, ...], *, loop_head: bool) -> torch.Tensor:
    """mmseg's SegFormer head forward (eval mode) written from its source, on the encoder's four feature maps."""
    head = {name.removeprefix("decode_head."): t for name, t in state.items() if name.startswith("decode_head.")}
    size, batch = features[0].shape[2:], features[0].shape[0]
    projected = []
    for stage, x in enumerate(features):
        prefix = f"linear_c.{stage}" if loop_head else f"linear_c{stage + 1}"
        y = F.linear(x.flatten(2).transpose(1, 2), head[f"{prefix}.proj.weight"], head[f"{prefix}.proj.bias"])
        y = y.permute(0, 2, 1).reshape(batch, -1, *x.shape[2:])
        projected.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False) if stage else y)
    fused = F.conv2d(torch.cat(projected if loop_head else projected[::-1], dim=1), head["linear_fuse.conv.weight"])
    fused = F.relu(F.batch_norm(fused, head["linear_fuse.bn.running_mean"], head["linear_fuse.bn.running_var"],
                                head["linear_fuse.bn.weight"], head["linear_fuse.bn.bias"], training=False, eps=1e-5))
    return F.conv2d(fused, head["linear_pred.weight"], head["linear_pred.bias"])


def lwmm(*argv: str | Path) -> int:
    return main([str(arg) for arg in argv])


def uda_checkpoint(path: Path, student: Path, teacher: Path, *, loop_head: bool = False) -> Path:
    """A DAFormer/HRDA/MIC-style checkpoint: ``model.`` student, ``ema_model.`` teacher, ``imnet_model.``, meta CLASSES."""
    state = {f"model.{k}": v for k, v in build_mmseg_state(student, loop_head=loop_head).items()}
    state |= {f"ema_model.{k}": v for k, v in build_mmseg_state(teacher, loop_head=loop_head).items()}
    state["imnet_model.backbone.patch_embed1.proj.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save({"meta": {"CLASSES": CLASSES, "PALETTE": [[128, 64, 128]] * 5, "iter": 40000, "mmcv_version": "1.3.7"},
                "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5}]}}, path)
    return path


@pytest.mark.parametrize(("loop_head", "weights"), [(False, None), (True, "ema_model")],
                         ids=["nvlabs-head-student", "daformer-loop-head-teacher"])
def test_uda_checkpoint_converts_to_equal_tensors_and_logits(tmp_path: Path, loop_head: bool, weights: str | None,
                                                             capfd: pytest.CaptureFixture) -> None:
    student, teacher = make_tiny_segformer(tmp_path / "student", seed=0), make_tiny_segformer(tmp_path / "teacher", seed=1)
    checkpoint = uda_checkpoint(tmp_path / "latest.pth", student, teacher, loop_head=loop_head)
    original = teacher if weights else student
    output = tmp_path / f"converted-{weights}"
    assert lwmm("convert", checkpoint, "--output", output, "--num-attention-heads", HEADS,
                *(["--weights", weights] if weights else [])) == 0
    converted, expected = load_file(output / "model.safetensors"), load_file(original / "model.safetensors")
    assert converted.keys() == expected.keys() and all(torch.equal(converted[k], expected[k]) for k in expected)

    model = SegformerForSemanticSegmentation.from_pretrained(output).eval()
    reference = SegformerForSemanticSegmentation.from_pretrained(original).eval()
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert model.config.num_attention_heads == [1, 2, 3, 4] and model.config.depths == [1, 1, 1, 1]
    assert model.config.sr_ratios == [8, 4, 2, 1] and model.config.patch_sizes == [7, 3, 3, 3]
    assert model.config.strides == [4, 2, 2, 2] and model.config.mlp_ratios == [4, 4, 4, 4]
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        features = reference.segformer(pixels, output_hidden_states=True).hidden_states
        prefix = "model." if weights is None else "ema_model."
        state = {k[len(prefix):]: v for k, v in torch.load(checkpoint, weights_only=True)["state_dict"].items() if k.startswith(prefix)}
        assert torch.allclose(logits, mmseg_head_logits(state, features, loop_head=loop_head), atol=1e-5)
        assert torch.equal(logits, reference(pixel_values=pixels).logits)

    card = ModelCard.load(output / "README.md")
    assert f"`{checkpoint}`" in card.text and f"`{sha256_of(checkpoint)}`" in card.text
    assert card.data.pipeline_tag == "image-segmentation"
    out = capfd.readouterr().out
    left_out = out.split("left out: ", 1)[1].strip().split("; ")
    other = "ema_model" if weights is None else "model"
    assert set(left_out) == {"decode_head.conv_seg (2 tensors)", f"{other}.* ({len(state)} tensors: the UDA wrapper's other model)",
                             "imnet_model.* (1 tensor: the UDA wrapper's ImageNet feature model)"}
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "config.json", "lwmm_conversion.yaml", "model.safetensors",
                                                        "preprocessor_config.json"]
    record = yaml.safe_load((output / "lwmm_conversion.yaml").read_text())
    assert (record["source"], record["sha256"], record["weights"]) == (str(checkpoint), sha256_of(checkpoint), weights or "model")
    assert record["weights_sha256"] == {"model.safetensors": sha256_of(output / "model.safetensors")}


def test_daformer_head_gives_an_encoder_that_merges_with_a_segformer(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    source, other = make_tiny_segformer(tmp_path / "source", seed=0), make_tiny_segformer(tmp_path / "other", seed=1)
    state = {k: v for k, v in build_mmseg_state(source).items() if not k.startswith("decode_head.")}
    state |= {name: torch.randn(shape) for name, shape in DAFORMER_HEAD.items()}
    checkpoint = tmp_path / "daformer.pth"
    torch.save({"meta": {}, "state_dict": state}, checkpoint)  # a plain (non-UDA) checkpoint
    output = tmp_path / "encoder"
    assert lwmm("convert", checkpoint, "--output", output, "--num-attention-heads", HEADS) == 0
    out = capfd.readouterr().out
    assert "encoder only (SegformerModel)" in out
    assert "left out: decode_head.embed_layers (2 tensors); decode_head.fuse_layer (1 tensor); decode_head.linear_pred (1 tensor)" in out
    encoder, expected = load_file(output / "model.safetensors"), load_file(source / "model.safetensors")
    assert encoder.keys() == {k.removeprefix("segformer.") for k in expected if k.startswith("segformer.")}
    assert all(torch.equal(encoder[k], expected[f"segformer.{k}"]) for k in encoder)
    assert type(AutoModel.from_pretrained(output)).__name__ == "SegformerModel"
    assert "`decode_head.fuse_layer (1 tensor)`" in (output / "README.md").read_text()

    merged = tmp_path / "merged"
    assert lwmm("merge", other, output, "--output", merged, "--alpha", "0.5") == 0
    result = load_file(merged / "model.safetensors")
    name = "segformer.encoder.block.0.0.mlp.dense1.weight"  # a shallow layer: half each (alpha = 0.5 before the start layer)
    assert torch.allclose(result[name], (expected[name] + load_file(other / "model.safetensors")[name]) / 2)
    assert torch.equal(result["decode_head.classifier.weight"], load_file(other / "model.safetensors")["decode_head.classifier.weight"])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bad_checkpoints_fail_in_one_line_and_never_run_code(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    source = make_tiny_segformer(tmp_path / "source")
    marker = tmp_path / "pwned"
    cases = {}
    torch.save({"meta": {"hook": _Payload(marker)}, "state_dict": build_mmseg_state(source)}, tmp_path / "evil.pth")
    cases["evil.pth"] = ("evil.pth cannot be read with torch.load(weights_only=True), which never runs code from a pickle", [])
    torch.save({"meta": {"args": argparse.Namespace(lr=1)}, "state_dict": build_mmseg_state(source)}, tmp_path / "meta.pth")
    cases["meta.pth"] = ("it names argparse.Namespace, not a tensor or plain value", [])
    torch.save({"state_dict": build_mmseg_state(source)}, tmp_path / "nameless.pth")
    cases["nameless.pth"] = ("no class names (meta['CLASSES']): give them with --id2label FILE (5 classes)", [])
    cases["nameless.pth "] = ("--num-attention-heads 1,2,5,8: 5 heads do not divide the 24 channels of stage 3", None)
    torch.save({"meta": {}, "state_dict": {"model.backbone.x": torch.zeros(1)}}, tmp_path / "uda.pth")
    cases["uda.pth"] = ("--weights ema_model: ", ["--weights", "ema_model"])
    capfd.readouterr()
    for file, (message, extra) in cases.items():
        heads = [] if extra is None else ["--num-attention-heads", HEADS]
        assert lwmm("convert", tmp_path / file.strip(), "--output", tmp_path / "out", *heads, *(extra or [])) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lwmm-hub convert: error: ") and message in err[0], err
        assert not (tmp_path / "out").exists()
    assert not marker.exists()


def test_convert_a_checkpoint_from_the_hub(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    student = make_tiny_segformer(tmp_path / "student", seed=0)
    checkpoint = uda_checkpoint(tmp_path / "latest.pth", student, make_tiny_segformer(tmp_path / "teacher", seed=1))
    api = HfApi()
    repo_id = f"{hub.user}/mic-gta-cityscapes"
    api.create_repo(repo_id)
    commit = api.upload_file(path_or_fileobj=checkpoint, path_in_repo="Segmentation_Models/latest.pth", repo_id=repo_id).oid
    output = tmp_path / "converted"
    assert lwmm("convert", f"{repo_id}:Segmentation_Models/latest.pth", "--output", output, "--num-attention-heads", HEADS) == 0
    assert load_file(output / "model.safetensors").keys() == load_file(student / "model.safetensors").keys()
    card = (output / "README.md").read_text()
    assert f"`{repo_id}@{commit}:Segmentation_Models/latest.pth`" in card and sha256_of(checkpoint) in card
    assert lwmm("convert", f"{repo_id}:Segmentation_Models/missing.pth", "--output", tmp_path / "missing") == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        f"lwmm-hub convert: error: {repo_id}:Segmentation_Models/missing.pth: no such file in the repo")

    pushed = f"{hub.user}/mic-converted"
    assert lwmm("convert", checkpoint, "--output", tmp_path / "to-push", "--num-attention-heads", HEADS, "--push-to-hub", pushed) == 0
    (head,) = api.list_repo_commits(pushed)[:1]
    assert head.title == "Add SegFormer converted from latest.pth (lwmm-hub)"
    assert sorted(api.list_repo_files(pushed)) == [".gitattributes", "README.md", "config.json", "lwmm_conversion.yaml",
                                                   "model.safetensors", "preprocessor_config.json"]
    assert f'from_pretrained("{pushed}")' in (tmp_path / "to-push" / "README.md").read_text()
    api.create_repo(f"{hub.user}/other")
    api.upload_folder(folder_path=make_tiny_segformer(tmp_path / "other", seed=3), repo_id=f"{hub.user}/other")
    assert lwmm("merge", f"{hub.user}/other", pushed, "--output", tmp_path / "merged") == 0  # merges like any Hub model
