"""Shared fixtures: tiny models, and an environment with no network."""

from __future__ import annotations

import os

import pytest

from helpers import make_tiny_segformer

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True, scope="session")
def _remembered_hashes_in_a_temporary_folder(tmp_path_factory):
    """Merges remember their sources' hashes: in a folder of the session's, never the user's cache."""
    os.environ["HF_LWMM_CACHE"] = str(tmp_path_factory.mktemp("hf-lwmm-cache"))


@pytest.fixture
def tiny_models(tmp_path):
    """Three tiny SegFormers with the same architecture and different weights."""
    return [make_tiny_segformer(tmp_path / f"model_{i}", seed=i) for i in range(3)]
