"""``--model hf``: a Hugging Face architecture built from ``config.json`` (random weights, offline), as a ModelSource.

``wsa spec check SPEC CKPT --model hf`` and ``wsa align ... --model hf`` load each state into the
class the config names (``architectures[0]``, else ``AutoModel``) and compare outputs on seeded
random token ids. A headless model (``BertModel``, ``LlamaModel``...) outputs its residual
stream, which a permutation reorders: its outputs are compared in group ``R``'s order. Buffers a checkpoint may carry (``position_ids``...) and a tied head the
checkpoint leaves out are accepted; any other missing or extra key is exit 5 naming it.
Needs ``transformers`` (the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsa_cli.errors import MismatchError
from wsa_cli.permute.factory import ModelSource
from wsa_cli.scope.selection import matches_any


@dataclass
class HFModelSource(ModelSource):
    """Builds ``config``'s architecture; inputs are seeded random token ids of length ``input_shape[0]``."""

    config: dict[str, Any] = field(default_factory=dict)

    def example(self, seed: int = 0, batch: int = 4) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        vocab = int(self.config.get("vocab_size", 100))
        return torch.randint(0, vocab, (batch, *(self.input_shape or (16,))), generator=gen)

    def build(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        from wsa_cli.permute.hf_templates import BUFFERS

        model = self.fresh(state)
        own = model.state_dict()
        tied = {k for k in own if k.endswith("lm_head.weight")} if getattr(model.config, "tie_word_embeddings", False) else set()
        for k in own:
            if k not in state and k not in tied:
                raise MismatchError(f"the checkpoint lacks a tensor the {self.name} architecture has", key=k)
        for k in state:
            if k not in own:
                if matches_any(k, BUFFERS):
                    continue
                raise MismatchError(f"the {self.name} architecture has no such tensor", key=k)
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise MismatchError(f"has shape {tuple(state[k].shape)}, the {self.name} architecture expects {tuple(own[k].shape)}", key=k)
        model.load_state_dict({k: state[k].detach().to(own[k].dtype) for k in own if k in state}, strict=False)
        if tied:
            model.tie_weights()
        return model.eval()


def hf_model_source(where: str | Path, *, seq_len: int = 16) -> HFModelSource:
    """The architecture of the ``config.json`` at ``where`` (a file or its folder)."""
    from wsa_cli.evaluation.hf import require_transformers
    from wsa_cli.permute.hf_templates import headless, read_config

    cfg = read_config(where)
    name = f"hf:{Path(where)}"

    def factory(_state: Mapping[str, torch.Tensor] | None) -> nn.Module:
        transformers = require_transformers()
        d = dict(cfg)
        model_type = d.pop("model_type", None)
        if model_type is None:
            raise MismatchError("config.json has no model_type", path=Path(where))
        config = transformers.AutoConfig.for_model(model_type, **d)
        arch = (cfg.get("architectures") or [None])[0]
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        torch.manual_seed(0)
        return cls(config) if cls is not None else transformers.AutoModel.from_config(config)

    # a headless model's output is the residual stream, group R of the templates
    return HFModelSource(name, factory, (seq_len,), "R" if headless(cfg) else None, cfg)
