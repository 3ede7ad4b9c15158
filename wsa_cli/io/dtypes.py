"""Mapping between safetensors dtype tags (``F32``, ``BF16``, ``F8_E4M3``...) and torch dtypes."""

from __future__ import annotations

import torch

_TAGS: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "C128": "complex128",
}

#: safetensors tag -> torch dtype, for the dtypes this torch build has.
TAG_TO_DTYPE: dict[str, torch.dtype] = {
    tag: getattr(torch, name) for tag, name in _TAGS.items() if isinstance(getattr(torch, name, None), torch.dtype)
}
#: torch dtype -> safetensors tag.
DTYPE_TO_TAG: dict[torch.dtype, str] = {dt: tag for tag, dt in TAG_TO_DTYPE.items()}

#: Names accepted in recipes and on the command line for an output dtype.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``.

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")
