"""Checkpoint I/O: lazy readers for every common format and an atomic, streaming writer."""

from wsa_cli.io.base import CheckpointReader, TensorInfo, numel
from wsa_cli.io.dtypes import DTYPE_NAMES, dtype_name
from wsa_cli.io.open import open_checkpoint
from wsa_cli.io.safetensors_reader import SafetensorsReader, ShardedSafetensorsReader
from wsa_cli.io.torch_reader import TorchReader
from wsa_cli.io.writer import (
    SafetensorsWriter,
    atomic_write_text,
    check_output,
    plan_shards,
    save_safetensors,
)

__all__ = [
    "DTYPE_NAMES",
    "CheckpointReader",
    "SafetensorsReader",
    "SafetensorsWriter",
    "ShardedSafetensorsReader",
    "TensorInfo",
    "TorchReader",
    "atomic_write_text",
    "check_output",
    "dtype_name",
    "numel",
    "open_checkpoint",
    "plan_shards",
    "save_safetensors",
]
