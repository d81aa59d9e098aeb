"""hf_lwmm: layer-wise merging of SegFormer-style segmentation models, integrated with the Hugging Face Hub."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_lwmm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from hf_lwmm.errors import LwmmError
from hf_lwmm.recipe import MergeRecipe
from hf_lwmm.merge import MergeResult, merge

__all__ = ["LwmmError", "MergeRecipe", "MergeResult", "merge", "__version__"]
