"""``open_checkpoint``: one entry point that picks the right reader for a path.

Accepted inputs:

* ``model.safetensors`` -- one safetensors file;
* ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``) -- Hugging Face shards;
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` -- a pickled PyTorch checkpoint (weights only);
* a folder holding one model in any of the above forms (an index wins; several ``.safetensors``
  files without an index are read as shards). Other files in the folder (``config.json``,
  tokenizer files) are reported by :meth:`CheckpointReader.extra_files`. A Hugging Face Trainer
  checkpoint folder (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ``training_args.bin``
  next to the model) resolves to the model by the Hugging Face names (``model.safetensors[.index.json]``,
  then ``pytorch_model.bin[.index.json]``); the training-state files are listed in ``skipped``.

A file with another suffix is recognised by its first bytes (safetensors header or zip/pickle).

Every path is checked before anything opens it (:func:`~wsa_cli.inputs.check_input`): only regular
files and folders are read, and OS errors become one-line errors naming the file and the reason.
"""

from __future__ import annotations

import stat
from pathlib import Path

from wsa_cli.errors import CheckpointError, InvalidValueError
from wsa_cli.inputs import check_input, os_error
from wsa_cli.io.base import CheckpointReader
from wsa_cli.io.safetensors_reader import SafetensorsReader, ShardedSafetensorsReader, read_index
from wsa_cli.io.torch_reader import TORCH_SUFFIXES, TorchReader

#: The merge report's file name: inside a folder output, or ``NAME.wsa-merge-report.json`` next to a file.
MERGE_REPORT_NAME = "wsa-merge-report.json"
#: The copy of the recipe that made a merged folder (inside the folder output).
RECIPE_COPY_NAME = "wsa-recipe.yaml"
#: Files that wsa itself writes next to a merged model; never treated as model files.
WSA_SIDE_FILES = (MERGE_REPORT_NAME, RECIPE_COPY_NAME)
#: Top-level files of a folder output that wsa generates (the merge's own model card replaces the parent's).
_WSA_FOLDER_FILES = ("README.md",)
#: Weights in other formats (ONNX, GGUF, Keras, Flax, TFLite, rust-bert): stale after a merge, never copied.
_OTHER_WEIGHTS = (".onnx", ".gguf", ".h5", ".msgpack", ".tflite", ".ot")
#: Training state a Hugging Face ``Trainer`` saves next to the model: never weights, never copied.
TRAINING_STATE_NAMES = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")
_TRAINING_STATE_PREFIXES = ("rng_state",)  # rng_state.pth, rng_state_0.pth ... (one per process)
#: Hugging Face weight names, in the order ``transformers`` picks them.
_HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def is_training_state(p: Path) -> bool:
    """A Trainer checkpoint's optimizer, scheduler, RNG or arguments file (not model weights).

    Example:
        >>> is_training_state(Path("rng_state_3.pth")), is_training_state(Path("pytorch_model.bin"))
        (True, False)
    """
    return p.name in TRAINING_STATE_NAMES or (p.name.startswith(_TRAINING_STATE_PREFIXES) and p.suffix == ".pth")


def _sniff(path: Path) -> str | None:
    """Guess a format from the first bytes: 'safetensors', 'torch' or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise os_error(exc, path) from None
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return None


def _open_index(index: Path, extra: list[Path] | None, container_key: str | None, shown: Path) -> CheckpointReader:
    shards, weight_map = read_index(index)
    if index.name.endswith(".safetensors.index.json") or all(s.suffix == ".safetensors" for s in shards):
        return ShardedSafetensorsReader(shown, shards, weight_map=weight_map, index_path=index, extra_files=extra)
    return TorchReader(shown, container_key=container_key, shards=shards, extra_files=extra)


def _open_folder(folder: Path, container_key: str | None) -> CheckpointReader:
    try:  # is_file() follows symlinks and is False for FIFOs and devices: those are never opened
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise os_error(exc, folder) from None
    training = [p for p in files if is_training_state(p)]
    files = [p for p in files if p not in training]
    reader = _open_model_files(folder, files, container_key)
    for p in training:
        reader.skipped[p.name] = "training state of a Trainer checkpoint (not model weights): ignored"
    return reader


def _open_model_files(folder: Path, files: list[Path], container_key: str | None) -> CheckpointReader:
    indexes = [p for p in files if p.name.endswith(".index.json")]
    st_files = [p for p in files if p.suffix == ".safetensors"]
    pt_files = [p for p in files if p.suffix in TORCH_SUFFIXES]
    if len(indexes) > 1:
        # Hugging Face repos often ship both formats; safetensors wins, as in transformers.
        st_index = [p for p in indexes if p.name.endswith(".safetensors.index.json")]
        indexes = st_index[:1] if len(st_index) == 1 else indexes
        if len(indexes) > 1:
            raise CheckpointError(f"folder holds several index files ({', '.join(p.name for p in indexes)}); pass one", path=folder)
    if indexes:
        shards, _ = read_index(indexes[0])
        extra = [p for p in files if p not in shards and p != indexes[0] and not _is_weight_file(p) and p.name not in WSA_SIDE_FILES]
        return _open_index(indexes[0], extra, container_key, folder)
    extra = [p for p in files if not _is_weight_file(p) and p.name not in WSA_SIDE_FILES]
    if st_files:
        if len(st_files) == 1:
            return SafetensorsReader(st_files[0], extra_files=extra)
        return ShardedSafetensorsReader(folder, st_files, extra_files=extra)
    named = [p for p in pt_files if p.name in _HF_WEIGHT_NAMES]
    if len(pt_files) == 1 or named:  # pytorch_model.bin wins over other pickles, as in transformers
        return TorchReader((named or pt_files)[0], container_key=container_key, extra_files=extra)
    if len(pt_files) > 1:
        names = ", ".join(p.name for p in pt_files)
        raise CheckpointError(f"folder holds several PyTorch checkpoints ({names}) and no index; pass one file", path=folder)
    raise CheckpointError("folder holds no .safetensors, .pt, .pth, .bin or .ckpt file", path=folder)


def _is_weight_file(p: Path) -> bool:
    return p.suffix == ".safetensors" or p.suffix in TORCH_SUFFIXES or p.name.endswith(".index.json")


def side_tree(folder: str | Path) -> list[tuple[str, Path]]:
    """The non-weight tree of a model folder: what a merged folder copies from its template model.

    Returns ``(relative name, source)`` pairs, sorted: every file in the folder and its
    sub-folders (sentence-transformers ``1_Pooling/``, tokenizer and generation configs), and every
    empty sub-folder (``2_Normalize/``) as itself. Left out: weights (``*.safetensors``, ``*.bin``,
    ``*.pt``, ``*.pth``, ``*.ckpt``, index files; ONNX, GGUF, Keras, Flax files), training state
    (:func:`is_training_state`), wsa's own side files and the model card (``README.md``, which a
    merge generates), hidden entries (``.git``, ``.cache``) and anything that is not a regular file
    or folder. Symlinked folders are not followed.

    Example:
        >>> side_tree("models/minilm")  # doctest: +SKIP
        [('1_Pooling/config.json', ...), ('config.json', ...), ('tokenizer.json', ...)]
    """
    root = Path(folder)
    found: list[tuple[str, Path]] = []

    def walk(d: Path, rel: str) -> None:
        try:
            entries = sorted(d.iterdir())
        except OSError as exc:
            raise os_error(exc, d) from None
        for p in entries:
            name = f"{rel}{p.name}"
            if p.name.startswith("."):
                continue
            if p.is_dir() and not p.is_symlink():
                before = len(found)
                walk(p, name + "/")
                if len(found) == before and not any(True for _ in p.iterdir()):
                    found.append((name, p))  # an empty folder (sentence-transformers' 2_Normalize/)
            elif p.is_file() and not _is_weight_file(p) and not is_training_state(p) and p.suffix not in _OTHER_WEIGHTS:
                generated = rel == "" and p.name in (*WSA_SIDE_FILES, *_WSA_FOLDER_FILES)  # the merge writes its own
                if not generated:
                    found.append((name, p))

    walk(root, "")
    return found


def open_checkpoint(
    path: str | Path, *, container_key: str | None = None, strip_prefix: str | None = None
) -> CheckpointReader:
    """Open a checkpoint lazily, whatever its format.

    ``container_key`` picks the dict inside a pickled checkpoint (``state_dict``, ``ema.model``);
    ``strip_prefix`` removes a prefix shared by every key (``module.`` is always removed).

    Example:
        >>> with open_checkpoint("model.safetensors") as ckpt:  # doctest: +SKIP
        ...     print(ckpt.info("fc.weight").shape)
    """
    reader = _open_any(Path(path), container_key)
    try:
        if len(reader) == 0:
            raise CheckpointError("checkpoint holds no tensors (empty)", path=path)
        if container_key and not isinstance(reader, TorchReader):
            raise InvalidValueError(f"picks an entry inside a pickled checkpoint; this is a {reader.format_name} checkpoint",
                                    option="container_key", value=container_key, path=path)  # fmt: skip
        reader.strip_key_prefix("module.", required=False)  # DDP wraps every key in module.
        if strip_prefix:
            reader.strip_key_prefix(strip_prefix, required=True)
    except BaseException:
        reader.close()
        raise
    return reader


def _open_any(p: Path, container_key: str | None) -> CheckpointReader:
    st = check_input(p)  # before any open(): a FIFO would block it forever
    if stat.S_ISDIR(st.st_mode):
        return _open_folder(p, container_key)
    if p.name.endswith(".index.json"):
        return _open_index(p, None, container_key, p)
    if p.suffix == ".safetensors":
        return SafetensorsReader(p)
    if p.suffix in TORCH_SUFFIXES:
        return TorchReader(p, container_key=container_key)
    kind = _sniff(p)
    if kind == "safetensors":
        return SafetensorsReader(p)
    if kind == "torch":
        return TorchReader(p, container_key=container_key)
    raise CheckpointError(
        "unknown checkpoint format (expected .safetensors, .safetensors.index.json, .pt, .pth, .bin, .ckpt or a folder)",
        path=p,
    )
