"""Reader for pickled PyTorch checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``).

Safety: files are opened with ``torch.load(weights_only=True)``, which never runs a pickle's code;
a file that needs other globals is refused with an error naming them. Memory: ``mmap=True`` maps
zip-format files so that tensors are paged in when used, not all at once (legacy non-zip files
cannot be mapped and are loaded whole).

Containers: a plain state dict is used as is. Otherwise the reader looks, in order, for
``state_dict`` (PyTorch Lightning), ``model_state_dict``, ``model``, ``module``, ``net``,
``state`` and ``params`` holding a dict of tensors; ``container_key`` picks one explicitly (a dotted
path such as ``ema.model``). Key prefixes (``module.`` from DDP, ``--strip-prefix``) are removed by
:func:`wsa_cli.io.open_checkpoint` for every format alike.

Robustness: whatever a corrupt file makes the unpickler raise (IndexError, KeyError, struct.error,
RecursionError...) is a :class:`~wsa_cli.errors.CheckpointError` naming the file. Tensors come
out plain: an ``nn.Parameter`` (``torch.save(dict(model.named_parameters()))``) or a tensor that
requires grad is detached; sparse, quantized and meta tensors (no data) are refused by key.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import CheckpointError
from wsa_cli.inputs import check_input, os_error
from wsa_cli.io.base import CheckpointReader, TensorInfo, errno_error

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "state", "params")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].strip()


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only``; every way it can fail becomes one :class:`CheckpointError`."""
    check_input(path)  # a FIFO would block the open below forever
    mmap = zipfile.is_zipfile(path)  # mmap only works on the zip format (torch >= 1.6 default)
    try:
        with warnings.catch_warnings():
            # torch warns on stderr about the pickle protocol of foreign files; we report in one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as exc:
        raise os_error(exc, path) from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"pickle needs non-tensor globals ({found.group(1)}); refusing to run pickled code "
                "(re-save the state_dict with torch.save or convert to safetensors)",
                path=path,
            ) from None
        # torch wraps every weights-only failure in a long banner; the cause follows "WeightsUnpickler error:"
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("Check the documentation")[0]
        first = (detail.strip().splitlines() or ["unpickling failed"])[0].strip() or "unpickling failed"
        raise CheckpointError(f"corrupt or unsupported pickle ({first})", path=path) from None
    except MemoryError:
        raise CheckpointError("not a readable PyTorch checkpoint (out of memory while loading it)", path=path) from None
    except RecursionError:  # before RuntimeError, its base class
        raise CheckpointError("not a readable PyTorch checkpoint (corrupt pickle: nested too deeply)", path=path) from None
    except (RuntimeError, zipfile.BadZipFile) as exc:  # torch's zip reader and storage code
        cause = errno_error(exc)  # EMFILE and friends from torch's C++ file code
        if cause is not None:
            raise os_error(cause, path) from None
        raise CheckpointError(f"not a readable PyTorch checkpoint ({_first_line(exc) or type(exc).__name__})", path=path) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle makes the unpickler raise anything
        # IndexError, KeyError, TypeError, AssertionError, struct.error, EOFError, ...: the file
        # is corrupt, not wsa; weights_only means none of it ran code from the file
        kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
        detail = f"{kind}: {_first_line(exc)}" if _first_line(exc) else kind  # struct.error, not "error"
        raise CheckpointError(f"not a readable PyTorch checkpoint (corrupt pickle: {detail})", path=path) from None


def _plain_tensor(value: torch.Tensor, path: Path, key: str) -> torch.Tensor:
    """The tensor as a plain, dense CPU ``torch.Tensor`` with data, or an error naming the key.

    ``nn.Parameter`` and other subclasses, ``requires_grad`` and lazy conj/neg bits would reach
    the merge kernels as something other than plain data; sparse, quantized and meta tensors
    have no dense data to merge.
    """
    if value.layout != torch.strided:
        raise CheckpointError(f"sparse tensors are not supported ({value.layout}); save it with .to_dense()", path=path, key=key)
    if value.is_meta or value.device.type == "meta":
        raise CheckpointError("meta tensor has no data (saved from a model on the meta device?)", path=path, key=key)
    if value.is_quantized:
        raise CheckpointError(f"quantized tensors are not supported ({value.dtype}); save it with .dequantize()", path=path, key=key)
    plain = value.detach()
    if type(plain) is not torch.Tensor:
        plain = plain.as_subclass(torch.Tensor)
    return plain.resolve_conj().resolve_neg()  # no-ops (no copy) unless the bit is set


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _pick_container(obj: Any, container_key: str | None, path: Path) -> Mapping[str, Any]:
    if container_key:
        node, walked = obj, ""
        for part in container_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                have = f"keys: {', '.join(map(str, node.keys()))}" if isinstance(node, Mapping) else f"a {type(node).__name__}"
                where = f"{walked!r} holds " if walked else "top-level "
                raise CheckpointError(f"no entry {container_key!r} in the checkpoint ({where}{have})", path=path)
            node, walked = node[part], f"{walked}.{part}" if walked else part
        if not _is_tensor_dict(node):
            raise CheckpointError(f"entry {container_key!r} holds no tensors", path=path)
        return node
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}", path=path)
    for key in CONTAINER_KEYS:
        if key in obj and _is_tensor_dict(obj[key]):
            return obj[key]
    if _is_tensor_dict(obj):
        return obj
    raise CheckpointError(
        "no tensors found (empty checkpoint, or tensors nested under a key: pick it with --key); "
        f"top-level keys: {', '.join(map(str, obj.keys())) or 'none'}",
        path=path,
    )


class TorchReader(CheckpointReader):
    """A pickled PyTorch checkpoint (or a set of ``pytorch_model-*.bin`` shards with an index).

    Example:
        >>> with TorchReader("lightning.ckpt", container_key="state_dict") as r:  # doctest: +SKIP
        ...     r.keys()[:2]
    """

    format_name = "torch"

    def __init__(
        self,
        path: str | Path,
        *,
        container_key: str | None = None,
        shards: list[Path] | None = None,
        extra_files: list[Path] | None = None,
    ) -> None:
        super().__init__(path)
        self._files = shards or [self.path]
        self._tensors: dict[str, torch.Tensor] = {}
        for file in self._files:
            container = _pick_container(_torch_load(file), container_key, file)
            for raw_key, value in container.items():
                key = str(raw_key)
                if isinstance(value, torch.Tensor):
                    if key in self._tensors:
                        # two shards, or two keys with the same text (1 and '1')
                        raise CheckpointError("tensor stored twice (in two shards, or under keys 1 and '1')", path=file, key=key)
                    self._tensors[key] = _plain_tensor(value, file, key)
                else:
                    self.skipped[key] = f"not a tensor ({type(value).__name__})"
        if not self._tensors:
            raise CheckpointError("checkpoint holds no tensors", path=self.path)
        self._infos = {k: TensorInfo(k, tuple(v.shape), v.dtype) for k, v in self._tensors.items()}
        self._extra = list(extra_files or [])

    def _load(self, info: TensorInfo) -> torch.Tensor:
        return self._tensors[info.key]

    def files(self) -> list[Path]:
        return list(self._files)

    def extra_files(self) -> list[Path]:
        return list(self._extra)

    def close(self) -> None:
        self._tensors = {}
