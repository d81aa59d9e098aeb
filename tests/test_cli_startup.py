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
