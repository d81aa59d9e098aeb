"""Reading, writing and hashing weights without holding whole models in memory."""

from hf_lwmm.io.hashing import sha256_of, weights_sha256
from hf_lwmm.io.reader import TensorInfo, TensorSource, open_weights
from hf_lwmm.io.writer import ShardedSafetensorsWriter, parse_size

__all__ = ["TensorInfo", "TensorSource", "open_weights", "sha256_of", "weights_sha256", "ShardedSafetensorsWriter", "parse_size"]
