"""Reading and writing weights without holding whole models in memory."""

from hf_lwmm.io.reader import PlannedRead, ReadAhead, TensorInfo, TensorSource, open_weights, sha256_of, weights_sha256
from hf_lwmm.io.writer import ShardedSafetensorsWriter, parse_size

__all__ = ["PlannedRead", "ReadAhead", "TensorInfo", "TensorSource", "open_weights", "sha256_of", "weights_sha256",
           "ShardedSafetensorsWriter", "parse_size"]
