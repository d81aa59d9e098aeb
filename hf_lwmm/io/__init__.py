"""Reading and writing weights without holding whole models in memory."""

from hf_lwmm.io.reader import TensorInfo, TensorSource, open_weights
from hf_lwmm.io.writer import ShardedSafetensorsWriter, parse_size

__all__ = ["TensorInfo", "TensorSource", "open_weights", "ShardedSafetensorsWriter", "parse_size"]
