"""Hugging Face evaluators: score a merged state dict as a transformers model on a local file.

``--eval hf-perplexity:FILE``  causal LM; FILE is text, one example per non-empty line.
    Metrics: ``loss`` (mean next-token cross-entropy over all predicted tokens), ``perplexity``
    (``exp(loss)``), ``tokens``.
``--eval hf-similarity:FILE``  encoder; FILE holds sentence pairs: ``.tsv``/``.csv`` rows
    ``sentence1, sentence2[, score]`` or ``.jsonl`` objects with ``sentence1``, ``sentence2`` and
    optional ``score``. Embeddings are the attention-masked mean of the last hidden state (the
    sentence-transformers pooling of MiniLM-style models). Metrics: ``mean_cosine`` of the pairs;
    ``agreement``, the mean cosine between each sentence's embedding under the merged weights and
    under the folder's own weights (when the folder holds weights); with scores ``spearman``
    (rank correlation of pair cosine and score). ``loss`` is ``1 - spearman`` with scores, else
    ``1 - agreement``.
``--eval hf-classify:FILE``  sequence classifier; ``.csv`` (header row) or ``.jsonl`` with ``text``
    (or ``sentence``), optional ``text_pair``, and ``label`` (an index, or a name of the config's
    ``label2id``). Metrics: ``loss`` (mean cross-entropy), ``accuracy``.

The model is built once from the **model folder** (``config.json`` and the tokenizer files): for
``wsa sweep`` the ``--eval-model`` folder, else the recipe's base model's folder, else its first
model's (a model given as a file: the folder holding it); for ``wsa interpolate`` the folder of
checkpoint A. Each evaluation copies the state dict into that model (keys with or without the
architecture's prefix, such as ``bert.``; tied weights may be absent), so nothing is re-built
per point. Examples are read in file order, in batches (``batch_size``, padded), truncated to
the model's ``max_length``; ``limit`` keeps the first N. Evaluation runs in eval mode under
``torch.inference_mode`` on the given device: deterministic for a given device.

Needs ``transformers`` (the ``hf`` extra); without it the error says ``pip install 'wsa[hf]'``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import ConfigError, InputNotFoundError, InvalidValueError, MismatchError

BATCH_SIZE = 16
MAX_LENGTH = 256


def require_transformers() -> Any:
    """Import transformers, or explain how to get it (exit 2)."""
    try:
        import transformers
    except ImportError:
        raise InvalidValueError("needs transformers, which is not installed; install the extra: pip install 'wsa[hf]'",
                                option="evaluator") from None  # fmt: skip
    transformers.logging.set_verbosity_error()
    return transformers


# -- data files -----------------------------------------------------------------------------------


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputNotFoundError("evaluation data file not found", path=path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the evaluation data: {exc}", path=path) from None


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    """The non-empty lines of a text file (the first ``limit``)."""
    lines = [ln.strip() for ln in _read(path).splitlines() if ln.strip()]
    if not lines:
        raise ConfigError("holds no text (one example per non-empty line)", path=path, line=1)
    return lines[:limit]


def _records(path: Path) -> list[tuple[int, dict[str, Any] | list[str]]]:
    """(line, record) of a ``.jsonl`` (objects), ``.csv`` or ``.tsv`` file (lists of cells)."""
    text = _read(path)
    out: list[tuple[int, dict[str, Any] | list[str]]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"not a JSON object: {exc}", path=path, line=n) from None
            if not isinstance(obj, dict):
                raise ConfigError("each line must be a JSON object", path=path, line=n)
            out.append((n, obj))
        return out
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    for n, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), 1):
        if row and any(c.strip() for c in row):
            out.append((n, [c.strip() for c in row]))
    return out


def read_pairs(path: Path, limit: int | None = None) -> tuple[list[tuple[str, str]], list[float] | None]:
    """Sentence pairs and (when every pair has one) their gold scores."""
    pairs: list[tuple[str, str]] = []
    scores: list[float | None] = []
    for n, rec in _records(path):
        if isinstance(rec, dict):
            a, b, s = rec.get("sentence1"), rec.get("sentence2"), rec.get("score")
        else:
            if n == 1 and rec[:2] == ["sentence1", "sentence2"]:
                continue  # a header row
            a, b, s = (rec + [None, None, None])[:3] if len(rec) >= 2 else (None, None, None)
        if not isinstance(a, str) or not isinstance(b, str):
            raise ConfigError("expected a pair: sentence1, sentence2[, score]", path=path, line=n)
        try:
            scores.append(None if s in (None, "") else float(s))
        except (TypeError, ValueError):
            raise ConfigError(f"score {s!r} is not a number", path=path, line=n) from None
        pairs.append((a, b))
    if not pairs:
        raise ConfigError("holds no sentence pairs", path=path, line=1)
    pairs, scores = pairs[:limit], scores[:limit]
    gold = [float(s) for s in scores if s is not None]
    return pairs, (gold if len(gold) == len(pairs) and len(pairs) >= 2 else None)


def read_labeled(path: Path, limit: int | None = None) -> tuple[list[tuple[str, str | None]], list[Any], list[int]]:
    """Texts (with optional second texts), raw labels and their line numbers of a classification file."""
    texts: list[tuple[str, str | None]] = []
    labels: list[Any] = []
    lines: list[int] = []
    header: list[str] | None = None
    for n, rec in _records(path):
        if isinstance(rec, list):
            if header is None:
                header = [c.lower() for c in rec]
                if "label" not in header or not ({"text", "sentence"} & set(header)):
                    raise ConfigError("the CSV header must name a 'text' (or 'sentence') and a 'label' column", path=path, line=n)
                continue
            rec = dict(zip(header, rec + [""] * (len(header) - len(rec)), strict=False))
        text = rec.get("text", rec.get("sentence"))
        if not isinstance(text, str) or "label" not in rec:
            raise ConfigError("each example needs 'text' (or 'sentence') and 'label'", path=path, line=n)
        pair = rec.get("text_pair")
        texts.append((text, pair if isinstance(pair, str) and pair else None))
        labels.append(rec["label"])
        lines.append(n)
    if not texts:
        raise ConfigError("holds no labeled examples", path=path, line=1)
    return texts[:limit], labels[:limit], lines[:limit]


# -- the model -----------------------------------------------------------------------------------


def check_folder(folder: Any, spec: str) -> Path:
    """The model folder, or an error saying how it is found."""
    if folder is None:
        raise InvalidValueError(f"{spec} needs the model's folder (config.json and tokenizer): give --eval-model DIR, or use "
                                "models given as Hugging Face folders (the base model's, else the first model's, is used)",
                                option="eval_model")  # fmt: skip
    p = Path(folder)
    p = p if p.is_dir() else p.parent
    if not (p / "config.json").is_file():
        raise InputNotFoundError("holds no config.json (the evaluator builds the model from it)", path=p)
    return p


def _key_map(model_keys: Sequence[str], state_keys: Sequence[str], prefix: str) -> dict[str, str]:
    """state key -> model key, adding or removing the architecture's prefix (``bert.``) where that makes them match."""
    known = set(model_keys)
    out = {}
    for k in state_keys:
        if k in known:
            out[k] = k
        elif prefix and f"{prefix}.{k}" in known:
            out[k] = f"{prefix}.{k}"
        elif prefix and k.startswith(prefix + ".") and k[len(prefix) + 1:] in known:
            out[k] = k[len(prefix) + 1:]
    return out


@dataclass
class HFModel:
    """A transformers model built once from a folder's config; :meth:`load` copies a state dict into it."""

    folder: Path
    auto: str  # AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
    model: Any = None
    tokenizer: Any = None
    device: torch.device | None = None
    reference: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def build(self, device: torch.device) -> None:
        if self.model is not None and self.device == device:
            return
        tf = require_transformers()
        try:
            config = tf.AutoConfig.from_pretrained(self.folder, local_files_only=True)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            model = getattr(tf, self.auto).from_config(config)
        except (OSError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"cannot build a {self.auto} from this folder: {first}", path=self.folder) from None
        self.model = model.to(device).eval()
        self.device = device

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` into the model; keys the model needs and ``state`` lacks (bar tied weights) are a MismatchError."""
        own = self.model.state_dict()
        mapping = _key_map(list(own), list(state), getattr(self.model, "base_model_prefix", ""))
        with torch.no_grad():
            for k, mk in mapping.items():
                if tuple(own[mk].shape) != tuple(state[k].shape):
                    raise MismatchError(f"shape {tuple(state[k].shape)} does not fit the model's {tuple(own[mk].shape)} "
                                        f"(built from {self.folder / 'config.json'})", key=k)  # fmt: skip
                own[mk].copy_(state[k])
        targets = set(mapping.values())
        loaded = {own[mk].data_ptr() for mk in targets}
        missing = [k for k in own if k not in targets and own[k].data_ptr() not in loaded]
        if missing:
            raise MismatchError(f"the merged weights lack {len(missing)} tensor(s) the model built from {self.folder / 'config.json'} "
                                f"needs, e.g. {missing[0]!r} (is the model folder the right one?)")  # fmt: skip

    def folder_weights(self) -> dict[str, torch.Tensor] | None:
        """The folder's own weights (safetensors), if it has them: the reference of ``agreement``."""
        from wsa_cli.io import open_checkpoint

        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (self.folder / name).is_file():
                with open_checkpoint(self.folder) as r:
                    return {k: v.clone() for k, v in r.state_dict().items()}
        return None


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _max_length(hf: HFModel) -> int:
    cfg = hf.model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or MAX_LENGTH
    return int(min(limit, MAX_LENGTH))


# -- the three evaluators ------------------------------------------------------------------------


def perplexity(hf: HFModel, texts: Sequence[str], device: torch.device, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Mean next-token cross-entropy over every predicted token of ``texts``, and its exp."""
    tok = hf.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "right"
    total, count = 0.0, 0
    for idx in _batches(len(texts), batch_size):
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=_max_length(hf)).to(device)
        logits = hf.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()  # (B, T, V)
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")  # (B, T-1)
        total += float(nll[mask].double().sum())
        count += int(mask.sum())
    if count == 0:
        raise InvalidValueError("no example has two tokens or more: nothing to predict", option="evaluator")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(count)}


def embed(hf: HFModel, sentences: Sequence[str], device: torch.device, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """``(N, H)`` attention-masked mean of the last hidden state, L2-normalised, float64 on the CPU."""
    out = []
    for idx in _batches(len(sentences), batch_size):
        enc = hf.tokenizer([sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                           max_length=_max_length(hf)).to(device)  # fmt: skip
        hidden = hf.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.double()
        m = enc["attention_mask"].unsqueeze(-1).double()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
        0.8
    """

    def ranks(v: Sequence[float]) -> torch.Tensor:
        t = torch.tensor(list(v), dtype=torch.float64)
        order = torch.argsort(t, stable=True)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for value in torch.unique(t):  # ties share their mean rank
            same = t == value
            if int(same.sum()) > 1:
                r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(torch.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def _similarity_task(hf: HFModel, pairs: list[tuple[str, str]], gold: list[float] | None) -> Callable[[torch.device], dict[str, float]]:
    sentences = [s for p in pairs for s in p]
    ref: dict[str, torch.Tensor] = {}

    def run(device: torch.device) -> dict[str, float]:
        emb = embed(hf, sentences, device)  # (2P, H)
        cos = (emb[0::2] * emb[1::2]).sum(-1)
        out = {"mean_cosine": float(cos.mean())}
        if "emb" in ref:
            out["agreement"] = float((emb * ref["emb"]).sum(-1).mean())
        if gold is not None:
            out["spearman"] = spearman(cos.tolist(), gold)
            out["loss"] = 1.0 - out["spearman"] if math.isfinite(out["spearman"]) else float("nan")
        elif "agreement" in out:
            out["loss"] = 1.0 - out["agreement"]
        else:
            raise InvalidValueError("needs gold scores in the pairs file or a model folder with its own weights (for agreement)",
                                    option="evaluator")  # fmt: skip
        return out

    def first_reference(device: torch.device) -> None:
        weights = hf.folder_weights()
        if weights is not None:
            hf.load(weights)
            ref["emb"] = embed(hf, sentences, device)

    run.reference = first_reference  # type: ignore[attr-defined]
    return run


def _label_ids(hf: HFModel, labels: list[Any], lines: list[int], path: Path) -> torch.Tensor:
    cfg = hf.model.config
    names = {str(k): int(v) for k, v in (getattr(cfg, "label2id", None) or {}).items()}
    ids = []
    for raw, n in zip(labels, lines, strict=True):
        text = str(raw).strip()
        if text in names:
            ids.append(names[text])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < cfg.num_labels:
            ids.append(int(text))
        else:
            raise ConfigError(f"label {raw!r} is neither an index below num_labels={cfg.num_labels} nor a name of the config's "
                              f"label2id ({', '.join(names)})", path=path, line=n)  # fmt: skip
    return torch.tensor(ids)


def classify(hf: HFModel, texts: Sequence[tuple[str, str | None]], labels: torch.Tensor, device: torch.device,
             batch_size: int = BATCH_SIZE) -> dict[str, float]:  # fmt: skip
    """Mean cross-entropy and accuracy of a sequence classifier."""
    total, correct = 0.0, 0
    for idx in _batches(len(texts), batch_size):
        first = [texts[i][0] for i in idx]
        second = [texts[i][1] or "" for i in idx] if any(texts[i][1] for i in idx) else None
        enc = hf.tokenizer(first, second, return_tensors="pt", padding=True, truncation=True, max_length=_max_length(hf)).to(device)
        logits = hf.model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}).logits.double()
        y = labels[list(idx)].to(device)
        total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    return {"loss": total / len(texts), "accuracy": correct / len(texts)}


#: name -> (AutoModel class, what FILE is)
HF_KINDS = {
    "hf-perplexity": ("AutoModelForCausalLM", "a text file, one example per line"),
    "hf-similarity": ("AutoModel", "sentence pairs (.tsv/.csv/.jsonl) with optional scores"),
    "hf-classify": ("AutoModelForSequenceClassification", "labeled examples (.csv with a header, or .jsonl)"),
}


def hf_evaluator(spec: str, *, model_folder: Any = None, limit: int | None = None) -> Callable[..., dict[str, float]]:
    """``hf-perplexity:FILE`` / ``hf-similarity:FILE`` / ``hf-classify:FILE`` -> an evaluator ``(state_dict, device) -> metrics``.

    The data file is read now (a bad file fails before any merge); the model is built from
    ``model_folder`` at the first call and reused by every later one.
    """
    name, _, file = spec.partition(":")
    if name not in HF_KINDS:
        raise InvalidValueError(f"unknown Hugging Face evaluator {name!r}; choose {', '.join(f'{k}:FILE' for k in HF_KINDS)}",
                                option="evaluator", value=spec)  # fmt: skip
    if not file.strip():
        raise InvalidValueError(f"needs a data file: {name}:FILE ({HF_KINDS[name][1]})", option="evaluator", value=spec)
    if limit is not None and limit < 1:
        raise InvalidValueError("must be a positive integer", option="limit", value=str(limit))
    require_transformers()
    path = Path(file.strip())
    folder = check_folder(model_folder, name)
    hf = HFModel(folder, HF_KINDS[name][0])
    state: dict[str, Any] = {}
    if name == "hf-perplexity":
        texts = read_lines(path, limit)
        run: Callable[[torch.device], dict[str, float]] = lambda device: perplexity(hf, texts, device)  # noqa: E731
    elif name == "hf-similarity":
        pairs, gold = read_pairs(path, limit)
        run = _similarity_task(hf, pairs, gold)
    else:
        examples, raw, lines = read_labeled(path, limit)

        def run(device: torch.device) -> dict[str, float]:
            if "labels" not in state:
                state["labels"] = _label_ids(hf, raw, lines, path)
            return classify(hf, examples, state["labels"], device)

    def evaluate(state_dict: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, float]:
        fresh = hf.model is None or hf.device != device
        hf.build(device)
        with torch.inference_mode():
            if fresh and hasattr(run, "reference"):
                run.reference(device)
            hf.load(state_dict)
            return run(device)

    return evaluate


__all__ = ["HF_KINDS", "HFModel", "classify", "embed", "hf_evaluator", "perplexity", "read_labeled", "read_lines", "read_pairs",
           "require_transformers", "spearman"]  # fmt: skip
