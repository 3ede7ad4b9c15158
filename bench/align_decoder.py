"""Real experiment: two small Llama-shaped decoders trained from different seeds, then the barrier
between them naive vs permuted (weight matching with the ``llama`` template) vs permuted+fp.

Data: this Python's own standard library sources (bytes, so the vocabulary is 256), which every
machine has; the last 10% of the files are held out. Model: LlamaForCausalLM from a config
(hidden 128, 2 layers, 4 query heads sharing 2 K/V heads, RoPE, SwiGLU), trained for
``--steps`` each with AdamW (``--family gpt2``: GPT-2 shape, hidden 128, 2 layers, 4 heads, whose
Q/K dimensions can be permuted too, which RoPE forbids). Metric: held-out perplexity along the line between the endpoints
(alpha = 0 is A, 1 is B); the barrier is the largest excess of the loss over the straight line
between the endpoint losses, reported in nats and as perplexity at the midpoint.

    nice -n 10 .venv/bin/python bench/align_decoder.py --steps 600 [--family gpt2]
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONFIGS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 256,
              "max_position_embeddings": 256, "tie_word_embeddings": False},
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 128, "n_head": 4, "n_layer": 2,
             "vocab_size": 256, "n_positions": 256},
}  # fmt: skip
CONFIG = CONFIGS["llama"]
SEQ, BATCH = 128, 16


def stdlib_bytes(limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    cut = int(len(files) * 0.9)
    def read(fs: list[Path]) -> bytes:
        out = bytearray()
        for f in fs:
            out += f.read_bytes() + b"\n"
            if len(out) > limit:
                break
        return bytes(out[:limit])
    train, val = read(files[:cut]), read(files[cut:])
    return torch.frombuffer(bytearray(train), dtype=torch.uint8).long(), torch.frombuffer(bytearray(val), dtype=torch.uint8).long()


def build(transformers, state=None):
    d = dict(CONFIG)
    mt, arch = d.pop("model_type"), d.pop("architectures")[0]
    model = getattr(transformers, arch)(transformers.AutoConfig.for_model(mt, **d))
    if state is not None:
        model.load_state_dict(state)
    return model


def train(transformers, data: torch.Tensor, seed: int, steps: int) -> tuple[dict[str, torch.Tensor], float, float]:
    torch.manual_seed(seed)
    model = build(transformers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    t0, loss = time.time(), float("nan")
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.numel() - SEQ - 1, (BATCH,), generator=gen)
        x = torch.stack([data[i : i + SEQ] for i in idx.tolist()])
        out = model(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = float(out.loss.detach())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, time.time() - t0, loss


def val_loss(transformers, state, val: torch.Tensor) -> float:
    model = build(transformers, state).eval()
    n = (val.numel() - 1) // SEQ
    x = val[: n * SEQ].reshape(n, SEQ)[:48]
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


def lerp(a, b, t: float):
    return {k: (1 - t) * a[k] + t * b[k] for k in a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="AdamW steps per model (batch 16 x 128 bytes)")
    ap.add_argument("--family", choices=sorted(CONFIGS), default="llama", help="decoder shape (template of the same name)")
    ap.add_argument("--bytes", type=int, default=3_000_000, help="training text size")
    args = ap.parse_args()
    import transformers

    global CONFIG
    CONFIG = CONFIGS[args.family]

    from wsa_cli.interpolate.mode_base import ModeOptions
    from wsa_cli.interpolate.permuted_modes import prepare_permuted, prepare_permuted_fp
    from wsa_cli.permute.hf_templates import config_spec
    from wsa_cli.permute.specfile import render_spec

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    train_data, val = stdlib_bytes(args.bytes)
    print(f"data: {train_data.numel()} training bytes, {val.numel()} held-out bytes of {sysconfig.get_paths()['stdlib']}")
    a, sa, la = train(transformers, train_data, 1, args.steps)
    b, sb, lb = train(transformers, train_data, 2, args.steps)
    print(f"{args.family}: {args.steps} steps each; A (seed 1) {sa:.0f} s, last train loss {la:.3f}; B (seed 2) {sb:.0f} s, last train loss {lb:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "decoder.spec.yaml"
        spec = config_spec(args.family, CONFIG, {k: v.shape for k, v in a.items()})
        spec_path.write_text(render_spec(spec))
        opts = ModeOptions(spec=spec_path, seed=0)
        t0 = time.time()
        modes = {"naive": (a, b), "permuted": prepare_permuted(a, b, opts), "permuted+fp": prepare_permuted_fp(a, b, opts)}
        print(f"weight matching + fp rescale: {time.time() - t0:.1f} s; {len(spec.sizes)} groups")
        pb = modes["permuted"][1]
        print(f"function preserved: val loss B {val_loss(transformers, b, val):.5f}, permuted B {val_loss(transformers, pb, val):.5f}, "
              f"permuted+fp B {val_loss(transformers, modes['permuted+fp'][1], val):.5f}")  # fmt: skip
        print()
        print("mode         " + "".join(f"  ppl@{t:<5}" for t in ALPHAS) + "  barrier(nats)  ppl mid / ppl ends")
        barriers = {}
        for name, (ea, eb) in modes.items():
            losses = [val_loss(transformers, lerp(ea, eb, t), val) for t in ALPHAS]
            barrier = max(loss - ((1 - t) * losses[0] + t * losses[-1]) for t, loss in zip(ALPHAS, losses, strict=True))
            barriers[name] = barrier
            ends = math.exp((losses[0] + losses[-1]) / 2)
            print(f"{name:<13}" + "".join(f"  {math.exp(v):9.3f}" for v in losses) + f"  {barrier:13.4f}  {math.exp(losses[2]) / ends:.3f}")
        print()
        for name in ("permuted", "permuted+fp"):
            print(f"barrier {name} / naive: {barriers[name] / barriers['naive']:.3f}")


if __name__ == "__main__":
    main()
