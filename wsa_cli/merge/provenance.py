"""Provenance of a merged model: what went in, recorded in the safetensors metadata and the report.

Two modes (``output.provenance`` in the recipe):

* ``fast`` (default): for every tensor file of every input, its byte size and modification time
  (``mtime_ns``). Costs nothing; identifies the inputs as long as they are not rewritten.
* ``sha256``: the SHA-256 of every input file's content. Exact, but reads every input once more
  (about as long as the merge itself for large models).

Nothing time-dependent about the *run* (no clock, no host name, no absolute paths) is recorded,
so the same recipe on the same inputs gives byte-identical output.

Example:
    >>> file_fingerprint(Path(__file__), "fast").keys() >= {"name", "bytes", "mtime_ns"}
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from wsa_cli import __version__

_BLOCK = 1 << 24  # 16 MiB reads while hashing


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: Path, mode: str) -> dict[str, Any]:
    """``{"name", "bytes", "mtime_ns"}`` (fast) or ``{"name", "bytes", "sha256"}`` for one file."""
    st = path.stat()
    entry: dict[str, Any] = {"name": path.name, "bytes": st.st_size}
    if mode == "sha256":
        entry["sha256"] = sha256_file(path)
    else:
        entry["mtime_ns"] = st.st_mtime_ns
    return entry


def input_fingerprint(label: str, files: list[Path], mode: str, *, from_stage: bool = False) -> dict[str, Any]:
    """Fingerprint of one input model (all its tensor files). A stage output is identified by name."""
    if from_stage:  # written by this very run; its bytes are fixed by the recipe and the inputs
        return {"input": label, "bytes": sum(p.stat().st_size for p in files)}
    return {"input": label, "files": [file_fingerprint(p, mode) for p in files]}


def merge_metadata(*, recipe_sha256: str, stage: str, method: str, inputs: list[dict[str, Any]], mode: str) -> dict[str, str]:
    """The safetensors ``__metadata__`` (string -> string) of a merged file.

    ``format: pt`` is what Hugging Face ``transformers`` expects when it loads safetensors.
    """
    return {
        "format": "pt",
        "wsa_version": __version__,
        "wsa_recipe_sha256": recipe_sha256,
        "wsa_stage": stage,
        "wsa_method": method,
        "wsa_provenance": mode,
        "wsa_inputs": json.dumps(inputs, separators=(",", ":"), sort_keys=True),
    }
