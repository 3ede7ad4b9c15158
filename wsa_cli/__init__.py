"""wsa: merge neural-network checkpoints with Weight Scope Alignment.

The library is usable without the CLI::

    from wsa_cli import open_checkpoint, tensor_scope, fuse_scopes

Public names are imported lazily so that ``wsa --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_checkpoint": "wsa_cli.io",
    "save_safetensors": "wsa_cli.io",
    "SafetensorsWriter": "wsa_cli.io",
    "CheckpointReader": "wsa_cli.io",
    "TensorInfo": "wsa_cli.io",
    "LayerSelector": "wsa_cli.scope",
    "tensor_scope": "wsa_cli.scope",
    "tensor_moments": "wsa_cli.scope",
    "Scope": "wsa_cli.scope",
    "fuse_scopes": "wsa_cli.fusion",
    "gaussian_kl": "wsa_cli.scope",
    "rescale_tensor": "wsa_cli.fusion",
    "resolve_device": "wsa_cli.device",
    "merge_recipe": "wsa_cli.merge.executor",
    "ScopeOptions": "wsa_cli.fusion.pipeline",
    "ScopeRegularizer": "wsa_cli.regularize",
    "WsaError": "wsa_cli.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsa_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
