"""Every command pays for the parser: building it must not import the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("transformers", "datasets", "evaluate", "accelerate", "matplotlib", "pandas")


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys; from hf_lwmm.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_a_merge_imports_no_heavy_library(tiny_models, tmp_path):
    """A merge needs torch, safetensors' layout and the card's few libraries: not accelerate (``--device auto`` asks
    ``torch.accelerator``), transformers or the evaluation stack."""
    argv = ["merge", *map(str, tiny_models[:2]), "-o", str(tmp_path / "out"), "-q"]
    code = (f"import sys; from hf_lwmm.cli import main; main({argv!r}); "
            f"print('heavy:', ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.splitlines()[-1] == "heavy: "


def test_device_auto_is_the_accelerator_torch_finds_else_the_cpu(monkeypatch):
    import torch

    from hf_lwmm.system import resolve_device

    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("mps"))
    assert resolve_device("auto") == torch.device("mps")
