"""Merge methods, one file each, behind a registry (``METHODS[name]``); each declares its typed parameters."""

from hf_lwmm.methods import layerwise, isotropic, linear, fisher  # noqa: F401, I001  (registration, in help order)
from hf_lwmm.methods.base import METHODS, LayerTable, MergeMethod, MethodParameters, register_method

__all__ = ["METHODS", "LayerTable", "MergeMethod", "MethodParameters", "register_method"]
