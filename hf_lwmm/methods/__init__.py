"""Merge methods, one file each, behind a registry (``METHODS[name]``)."""

from hf_lwmm.methods import fisher, isotropic, layerwise, linear  # noqa: F401  (registration)
from hf_lwmm.methods.base import METHODS, MergeMethod, register_method

__all__ = ["METHODS", "MergeMethod", "register_method"]
