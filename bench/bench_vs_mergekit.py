"""wsa vs mergekit on the same mergekit configs: wall time, peak memory and output difference per method.

mergekit lives in its own virtual environment (its pins clash with wsa's), e.g.::

    python -m venv /work/mkvenv && /work/mkvenv/bin/pip install mergekit

This script finds ``/work/mkvenv/bin/mergekit-yaml`` (or ``--mergekit PATH``), writes Llama-shaped
float32 models (``--size-mb`` each: a base and fine-tunes = base + small noise), writes one
mergekit config per method, and runs that same file through ``mergekit-yaml CONFIG OUT`` and
``wsa merge CONFIG -o OUT`` (wsa runs mergekit configs as they are, scope alignment off), in
alternating order, each in a fresh child process. Printed side by side in one run: wall time,
peak RSS of the child (``/usr/bin/time -f %M``), their ratios, and the largest absolute
difference between the two outputs over all tensors, with what that difference is expected to be:

* ``0``: the same formula in the same float32 arithmetic;
* ``rounding``: the same formula, operations in another order (a few float32 ulps);
* ``definition``: the methods draw random masks (DARE, DELLA: different random generators, so
  different entries are dropped) -- the outputs differ by the order of the task vectors; the
  difference says nothing about either tool (see docs/mergekit.md); model_stock: wsa clamps the
  mean cosine at 0 (a tensor whose fine-tunes point apart stays at the base), mergekit does not.

Usage: ``nice -n 10 .venv/bin/python bench/bench_vs_mergekit.py [--size-mb 500] [--set two|base2|both]``.
mergekit runs offline (``HF_HUB_OFFLINE=1``, ``--no-copy-tokenizer``, no model card); both tools
write float32 safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MERGEKIT = Path("/work/mkvenv/bin/mergekit-yaml")
VOCAB = 1024

#: method -> (set, mergekit config body after `merge_method:`; {A}, {B}, {BASE} are model folders, {L} the layer count), expected
TWO = {
    "linear": ("models:\n  - model: {A}\n    parameters: {{weight: 0.6}}\n  - model: {B}\n    parameters: {{weight: 0.4}}\n", "0"),
    "slerp": ("base_model: {A}\nmodels:\n  - model: {A}\n  - model: {B}\nparameters:\n  t:\n    - filter: self_attn\n"
              "      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n", "rounding"),
    "nuslerp": ("models:\n  - model: {A}\n    parameters: {{weight: 0.3}}\n  - model: {B}\n    parameters: {{weight: 0.7}}\n", "rounding"),
    "multislerp": ("models:\n  - model: {A}\n    parameters: {{weight: 0.3}}\n  - model: {B}\n    parameters: {{weight: 0.7}}\n", "multi"),
    "karcher": ("models:\n  - model: {A}\n  - model: {B}\n", "rounding"),
    "passthrough": ("slices:\n  - sources: [{{model: {A}, layer_range: [0, {H}]}}]\n  - sources: [{{model: {B}, layer_range: [{H}, {L}]}}]\n", "0"),
}
_TV = "base_model: {BASE}\nmodels:\n  - model: {A}\n    parameters: {{weight: 0.6{P}}}\n  - model: {B}\n    parameters: {{weight: 0.4{P}}}\n"
BASE2 = {
    "task_arithmetic": (_TV.replace("{P}", "") + "parameters: {{lambda: 0.8}}\n", "rounding"),
    "ties": (_TV.replace("{P}", ", density: 0.5") + "parameters: {{normalize: true}}\n", "tied"),
    "dare_linear": (_TV.replace("{P}", ", density: 0.5"), "definition"),
    "dare_ties": (_TV.replace("{P}", ", density: 0.5") + "parameters: {{normalize: true}}\n", "definition"),
    "breadcrumbs": (_TV.replace("{P}", ", density: 0.8, gamma: 0.05"), "crumbs"),
    "breadcrumbs_ties": (_TV.replace("{P}", ", density: 0.8, gamma: 0.05") + "parameters: {{normalize: true}}\n", "crumbs"),
    "della": (_TV.replace("{P}", ", density: 0.5, epsilon: 0.1"), "definition"),
    "della_linear": (_TV.replace("{P}", ", density: 0.5, epsilon: 0.1"), "definition"),
    "model_stock": ("base_model: {BASE}\nmodels:\n  - model: {A}\n  - model: {B}\n", "stock"),
    "linear": ("models:\n  - model: {BASE}\n    parameters: {{weight: 1.0}}\n  - model: {A}\n    parameters: {{weight: 1.0}}\n  - model: {B}\n    parameters: {{weight: 1.0}}\n", "rounding"),
}


def hidden_for(size_mb: float, layers: int) -> int:
    """A hidden size (multiple of 64) that makes a Llama-shaped float32 model of about ``size_mb``."""
    target = size_mb * 1e6 / 4
    h = 64
    while params(h + 64, layers) <= target:
        h += 64
    return h


def params(h: int, layers: int) -> int:
    inter = 8 * h // 3 // 64 * 64
    return layers * (4 * h * h + 3 * h * inter + 2 * h) + 2 * VOCAB * h + h


def write_model(folder: Path, h: int, layers: int, base: dict[str, torch.Tensor] | None, seed: int) -> dict[str, torch.Tensor]:
    """A Llama-shaped model folder (config.json + model.safetensors); a fine-tune of ``base`` when given."""
    g = torch.Generator().manual_seed(seed)
    inter = 8 * h // 3 // 64 * 64
    shapes = {"model.embed_tokens.weight": (VOCAB, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h), p + "self_attn.v_proj.weight": (h, h),
                   p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}  # fmt: skip
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (VOCAB, h)}
    sd = {}
    for k, s in shapes.items():
        if base is None:
            sd[k] = torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02
        else:
            sd[k] = base[k] + torch.randn(s, generator=g) * 0.002
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, folder / "model.safetensors")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": max(1, h // 64), "num_key_value_heads": max(1, h // 64),
              "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "hidden_act": "silu",
              "tie_word_embeddings": False, "torch_dtype": "float32"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return sd


def run(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, and its output tail; raises on failure.

    The peak comes from ``/usr/bin/time -f %M`` where it exists: a child forked straight from this
    process would report this process's own RSS at the fork as its floor (Linux carries the
    high-water mark across fork and exec), and this process held the generated models. Without
    ``/usr/bin/time`` it falls back to ``os.wait4``'s ``ru_maxrss``, an upper bound.
    """
    timer = Path("/usr/bin/time")
    peak_file = work / "peak-rss.txt"
    full = [str(timer), "-f", "%M", "-o", str(peak_file), *cmd] if timer.exists() else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({proc.returncode}):\n{text[-2000:]}")
    if timer.exists():
        return wall, int(peak_file.read_text().split()[-1]) / 1024, text
    return wall, usage.ru_maxrss / 1024, text


def weight_files(out: Path) -> list[Path]:
    return sorted(out.glob("*.safetensors")) if out.is_dir() else [out]


def max_abs_diff(a: Path, b: Path) -> tuple[float, str]:
    """The largest |a - b| over all tensors of two outputs (keys must be the same), and where."""
    def index(out: Path) -> dict[str, Path]:
        found = {}
        for f in weight_files(out):
            with safe_open(str(f), "pt") as r:
                found |= {k: f for k in r.keys()}  # noqa: SIM118 - safe_open is not iterable
        return found

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        only = sorted(set(ia) ^ set(ib))
        return float("inf"), f"key sets differ ({len(only)} keys, e.g. {only[0]})"
    worst, where = 0.0, ""
    for k in sorted(ia):
        with safe_open(str(ia[k]), "pt") as ra, safe_open(str(ib[k]), "pt") as rb:
            d = (ra.get_tensor(k).double() - rb.get_tensor(k).double()).abs().max().item()
        if d > worst:
            worst, where = d, k
    return worst, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", default=str(DEFAULT_MERGEKIT), help="mergekit-yaml executable (its own venv)")
    ap.add_argument("--size-mb", type=float, default=500.0, help="size of each float32 input model")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--set", choices=("two", "base2", "both"), default="both", help="two models, base + 2, or both")
    ap.add_argument("--methods", default="", help="comma-separated subset of methods")
    ap.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temporary folder, removed)")
    args = ap.parse_args()
    mk = Path(args.mergekit)
    if not mk.exists():
        sys.exit(f"mergekit-yaml not found at {mk}: install mergekit in its own venv (python -m venv /work/mkvenv && "
                 "/work/mkvenv/bin/pip install mergekit) or pass --mergekit PATH")  # fmt: skip
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wsa-vs-mk-", dir=str(ROOT / "bench")))
    work.mkdir(parents=True, exist_ok=True)
    h = hidden_for(args.size_mb, args.layers)
    t0 = time.perf_counter()
    base = write_model(work / "base", h, args.layers, None, 0)
    write_model(work / "a", h, args.layers, base, 1)
    write_model(work / "b", h, args.layers, base, 2)
    del base
    size = (work / "a" / "model.safetensors").stat().st_size / 1e6
    print(f"inputs: Llama-shaped float32, {args.layers} layers, hidden {h}, {size:.0f} MB each ({time.perf_counter() - t0:.0f} s to write)")
    print(f"wsa {sys.executable} -m wsa_cli | mergekit {mk}; one paired run per method, order alternating; threads: all cores")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    wanted = {m for m in args.methods.split(",") if m}
    sets = [("two", TWO), ("base2", BASE2)] if args.set == "both" else [(args.set, TWO if args.set == "two" else BASE2)]
    head = f"{'set':6} {'method':17} {'wsa s':>7} {'mk s':>7} {'time mk/wsa':>11} {'wsa MB':>7} {'mk MB':>7} {'RSS mk/wsa':>10} {'max |diff|':>10}  expected"
    print(head)
    print("-" * len(head))
    n = 0
    try:
        for set_name, table in sets:
            for method, (body, expected) in table.items():
                if wanted and method not in wanted:
                    continue
                cfg = work / f"{set_name}-{method}.yml"
                text = f"merge_method: {method}\n" + body.format(A=work / "a", B=work / "b", BASE=work / "base", L=args.layers,
                                                                   H=args.layers // 2) + "dtype: float32\n"  # fmt: skip
                cfg.write_text(text)
                out_w, out_m = work / f"out-wsa-{set_name}-{method}", work / f"out-mk-{set_name}-{method}"
                for o in (out_w, out_m):
                    shutil.rmtree(o, ignore_errors=True)
                wsa_cmd = [sys.executable, "-m", "wsa_cli", "merge", str(cfg), "-o", str(out_w), "--quiet", "--force"]
                mk_cmd = [str(mk), str(cfg), str(out_m), "--no-copy-tokenizer", "--no-write-model-card", "--quiet", "--random-seed", "0"]
                runs = [("wsa", wsa_cmd), ("mk", mk_cmd)] if n % 2 == 0 else [("mk", mk_cmd), ("wsa", wsa_cmd)]
                got = {}
                for name, cmd in runs:
                    got[name] = run(cmd, env, work)
                n += 1
                diff, where = max_abs_diff(out_w, out_m)
                (ws, wm, _), (ms, mm, _) = got["wsa"], got["mk"]
                note = {"0": "0 (same formula, float32)", "rounding": "rounding (same formula, other operation order)",
                        "definition": "definition: random masks differ (other RNG), see docs/mergekit.md",
                        "tied": "0, but for entries tied at the trim threshold: mergekit's argsort is not stable, wsa keeps the lowest index",
                        "crumbs": "0, but for entries tied at a threshold: mergekit splits ties by sort order, wsa by value",
                        "multi": "definition: wsa's log map vs mergekit's tangent projection (small for close models)",
                        "stock": "definition: wsa clamps cos at 0 where mergekit extrapolates (t < 0); rounding elsewhere"}[expected]  # fmt: skip
                print(f"{set_name:6} {method:17} {ws:7.2f} {ms:7.2f} {ms / ws:11.2f} {wm:7.0f} {mm:7.0f} {mm / wm:10.2f} {diff:10.3g}  {note}"
                      + (f" [largest at {where}]" if diff > 0 and expected != "definition" else ""), flush=True)  # fmt: skip
                for o in (out_w, out_m):
                    shutil.rmtree(o, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
