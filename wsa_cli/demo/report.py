"""Turn a demo run into plain text: tables of its numbers and what they mean, in plain words.

Every sentence that judges a result is computed from this run's numbers (helped / hurt / about
the same), so the text never claims an improvement the run did not show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Differences in accuracy smaller than this are called "about the same" (1 point of 360 images ~ 0.3).
ACC_TOL = 0.01
#: Differences in loss barrier smaller than this are called "about the same".
LOSS_TOL = 0.02


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3f}"
    return str(v)


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table (first column left-aligned, the rest right-aligned).

    Example:
        >>> print(text_table(["a", "b"], [["x", 1.0]]))
        a      b
        -  -----
        x  1.000
    """
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths, strict=True))).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _compare(before: float | None, after: float | None, tol: float, lower_is_better: bool) -> str:
    if before is None or after is None:
        return "could not be compared"
    d = after - before
    if abs(d) < tol:
        return "about the same"
    better = d < 0 if lower_is_better else d > 0
    return "better" if better else "worse"


def _barrier(res: dict[str, Any], pair: str, mode: str) -> dict[str, Any] | None:
    for b in res["barriers"]:
        if b["pair"] == pair and b["mode"] == mode:
            return b
    return None


def _merge(res: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in res["merges"] if m["name"] == name), None)


def render_report(result: Any) -> str:
    """The demo report as Markdown-friendly plain text."""
    res = result.to_dict() if hasattr(result, "to_dict") else result
    cfg = res["config"]
    parts: list[str] = []
    from wsa_cli.tasks import get_task

    data = get_task(cfg["task"]).data_name
    parts.append(f"# wsa demo: Weight Scope Alignment on small {cfg['task']} models\n")
    parts.append(
        f"Task {cfg['task']} ({data}, 10 classes), width {cfg['width']}, "
        f"{cfg['epochs']} epochs per model, WSA coefficient {cfg['wsa_coef']:g} (target: the scopes of the "
        f"seed-0 initialisation). Output folder: {cfg['out_dir']}. Run time {res['seconds']:.0f} s.\n"
    )

    parts.append("## 1. Trained models\n")
    rows = [[n, m["optimizer"], m["seed"], m["wsa_coef"], m["test_accuracy"], m["test_loss"]] for n, m in res["models"].items()]
    parts.append(text_table(["model", "optimizer", "init seed", "wsa_coef", "test acc", "test loss"], rows) + "\n")

    parts.append("## 2. Layer scopes side by side (wsa inspect)\n")
    for pair, s in res["scopes"].items():
        parts.append(f"{s['a']} vs {s['b']} ({s['what']}):\n")
        rows = [[r["key"], r["std_a"], r["std_b"], r["std_ratio"], r["kl_to_fused"]] for r in s["layers"]]
        parts.append(text_table(["layer", f"std {s['a']}", f"std {s['b']}", "std ratio", "KL to fused"], rows) + "\n")

    parts.append("## 3. Merged models (wsa merge with recipes from recipes/)\n")
    rows = [[m["name"], m["template"].replace("built-in copy of ", ""), "yes" if m["align"] else "no", m["accuracy_a"], m["accuracy_b"], m["accuracy"]]
            for m in res["merges"]]  # fmt: skip
    parts.append(text_table(["merge", "recipe template", "scope align", "acc A", "acc B", "merged acc"], rows) + "\n")

    parts.append("## 4. Interpolation barriers (wsa interpolate)\n")
    rows = [[f"{b['a']} -> {b['b']}", b["mode"], b["loss_barrier"], b["acc_barrier"], b["mid_accuracy"]] for b in res["barriers"]]
    parts.append(text_table(["pair", "mode", "loss barrier", "acc barrier", "acc at alpha 0.5"], rows) + "\n")

    parts.append("## 5. What the numbers mean\n")
    parts.append(_explain(res))
    return "\n".join(parts).rstrip() + "\n"


def _explain(res: dict[str, Any]) -> str:
    out: list[str] = []
    sc = res["scopes"]
    plain, reg = sc.get("sgd-vs-adam"), sc.get("sgd-vs-adam-wsa")
    out.append(
        "* A layer's *scope* is the Gaussian N(mean, std^2) its weights follow. 'std ratio' is the larger std over "
        "the smaller; 'KL to fused' is how far a model's scope is from the scope the two models fuse into "
        "(0 = identical)."
    )
    if plain and reg:
        word = _compare(plain["max_std_ratio"], reg["max_std_ratio"], 0.02, lower_is_better=True)
        out.append(
            f"* SGD and Adam, started from the same weights, ended with layer stds up to {plain['max_std_ratio']:.2f}x "
            f"apart (largest KL to the fused scope {plain['max_kl_to_fused']:.3f}). Trained with the WSA regularizer, "
            f"the largest ratio is {reg['max_std_ratio']:.2f}x (KL {reg['max_kl_to_fused']:.3f}): the scopes match "
            f"{'more closely' if word == 'better' else 'less closely' if word == 'worse' else 'about as closely'}."
        )
    p, a, w = _merge(res, "average-sgd-adam-plain"), _merge(res, "average-sgd-adam-aligned"), _merge(res, "average-sgd-adam-wsa-trained")
    if p and a:
        word = _compare(p["accuracy"], a["accuracy"], ACC_TOL, lower_is_better=False)
        out.append(
            f"* Merging the SGD and Adam models by plain averaging gives {p['accuracy']:.3f} test accuracy; rescaling "
            f"each layer onto the fused scope first (the WSA merge) gives {a['accuracy']:.3f} ({word})."
        )
    if w:
        versus = ""
        if a:
            word = _compare(a["accuracy"], w["accuracy"], ACC_TOL, lower_is_better=False)
            versus = f"; the same merge of the pair trained without it gave {a['accuracy']:.3f}, so the regularizer made the merge {word}"
            versus = versus.replace("made the merge about the same", "left the merge about the same")
        out.append(
            f"* The pair trained with the regularizer merges (scope-aligned) to {w['accuracy']:.3f}, from endpoints at "
            f"{w['accuracy_a']:.3f} and {w['accuracy_b']:.3f}{versus}."
        )
    s_plain, s_perm = _merge(res, "average-seeds-plain"), _merge(res, "permuted-wsa-seeds")
    if s_plain and s_perm:
        out.append(
            f"* Two models from *different* initial weights hold their hidden units in unrelated orders: averaging them "
            f"directly gives {s_plain['accuracy']:.3f}. Matching units first (weight matching) and then aligning scopes "
            f"gives {s_perm['accuracy']:.3f} ({_compare(s_plain['accuracy'], s_perm['accuracy'], ACC_TOL, False)}). "
            "Scope alignment alone cannot fix a permutation; it only fixes scale."
        )
    out.append(
        "* The *loss barrier* is how far the test loss along the straight line between two models rises above the "
        "line between their own losses; near 0 means one connected low-loss region (the models can be averaged), "
        "large means a ridge in between. 'acc at alpha 0.5' is the accuracy of the plain midpoint (the average)."
    )
    n0, n1 = _barrier(res, "sgd-vs-adam", "naive"), _barrier(res, "sgd-vs-adam-wsa", "naive")
    if n0 and n1:
        word = _compare(n0["loss_barrier"], n1["loss_barrier"], LOSS_TOL, lower_is_better=True)
        verb = {"better": "lowered", "worse": "raised"}.get(word, "did not clearly change")
        out.append(
            f"* The paper's claim, on this pair: SGD and Adam from one init have a loss barrier of {n0['loss_barrier']:.3f} "
            f"(midpoint accuracy {n0['mid_accuracy']:.3f}); trained with the WSA regularizer the barrier is "
            f"{n1['loss_barrier']:.3f} (midpoint {n1['mid_accuracy']:.3f}): the regularizer {verb} it here."
        )
    for pair in ("sgd-vs-adam", "sgd-vs-adam-wsa", "seed0-vs-seed1"):
        n, ws = _barrier(res, pair, "naive"), _barrier(res, pair, "wsa")
        if n and ws:
            word = _compare(n["loss_barrier"], ws["loss_barrier"], LOSS_TOL, lower_is_better=True)
            out.append(
                f"* {n['a']} -> {n['b']} ({n['what']}): loss barrier {n['loss_barrier']:.3f} as trained, "
                f"{ws['loss_barrier']:.3f} with both ends rescaled onto the fused scope ({word})."
            )
        pm, pw = _barrier(res, pair, "permuted"), _barrier(res, pair, "permuted+wsa")
        if pm and pw and n:
            out.append(
                f"  After weight matching the barrier is {pm['loss_barrier']:.3f} (permuted) and "
                f"{pw['loss_barrier']:.3f} (permuted + scope alignment), against {n['loss_barrier']:.3f} without."
            )
    out.append(
        "* These are small models and one seed per setting; differences of a point or two are noise. "
        "bench/reproduce.py repeats every comparison over 10 seeds with paired differences (docs/reproduction.md): "
        "on digits the regularizer never lowered a barrier (SGD and Adam from one init have none to lower); on "
        "MNIST-1D (`wsa demo --task mnist1d-mlp`) it halved the SGD-vs-Adam loss barrier (0.21 -> 0.10 over 10 seeds) "
        "without making the merged model more accurate, and did not help after weight matching or in FedAvg."
    )
    return "\n".join(out) + "\n"
