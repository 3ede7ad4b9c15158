"""Make the tiny input checkpoints the example recipes merge (deterministic; committed outputs).

Run from the repository root::

    python recipes/models/make_models.py [--force]

Uses the built-in digits tasks (contract C1, ``wsa_cli.tasks``), CPU, one thread, fixed seeds:

* ``mlp-base.safetensors``: digits-mlp, width 32, 4 epochs -- the "pre-trained" base model;
* ``mlp-ft-{a,b,c}.safetensors``: the base fine-tuned 3 epochs on three disjoint thirds of the
  training set (three "tasks"/clients) -- inputs for average, task arithmetic, TIES, DARE;
* ``mlp-s1/s2.safetensors``: two digits-mlp models trained from different random inits (seeds
  1 and 2) -- inputs for SLERP, WSA alignment and permutation;
* ``cnn-1/`` (a Hugging Face-style folder with ``config.json``) and ``cnn-2.safetensors``:
  digits-cnn width 4, BatchNorm buffers included (integer ``num_batches_tracked``);
* ``fused-scopes.json``: the fused scope of the three fine-tuned models (``wsa scope fuse``
  format), a fixed target for the scope-file recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing models")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: this folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-reproducible CPU training
    torch.use_deterministic_algorithms(True)

    from wsa_cli.fusion.pipeline import ScopeOptions, fused_scope_table
    from wsa_cli.io import atomic_write_text, save_safetensors
    from wsa_cli.tasks import get_task, train_model

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def save(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        sd = {k: v.detach().contiguous() for k, v in sd.items()}
        save_safetensors(sd, out / name, force=args.force)
        print(f"wrote {out / name}")
        return sd

    n_train = get_task("digits-mlp").load_data(0).x_train.shape[0]
    base, _ = train_model("digits-mlp", seed=0, epochs=4, width=32, evaluate_each_epoch=False)
    base = save(base, "mlp-base.safetensors")
    fts = []
    for i, name in enumerate("abc"):
        idx = torch.arange(i * n_train // 3, (i + 1) * n_train // 3)
        ft, _ = train_model("digits-mlp", seed=10 + i, epochs=3, init_state=base, train_indices=idx, evaluate_each_epoch=False)
        fts.append(save(ft, f"mlp-ft-{name}.safetensors"))
    for seed in (1, 2):
        sd, _ = train_model("digits-mlp", seed=seed, epochs=4, width=32, evaluate_each_epoch=False)
        save(sd, f"mlp-s{seed}.safetensors")
    cnn1, _ = train_model("digits-cnn", seed=1, epochs=2, width=4, evaluate_each_epoch=False)
    cnn2, _ = train_model("digits-cnn", seed=2, epochs=2, width=4, evaluate_each_epoch=False)
    (out / "cnn-1").mkdir(exist_ok=True)
    save(cnn1, "cnn-1/model.safetensors")
    atomic_write_text(out / "cnn-1" / "config.json", json.dumps({"task": "digits-cnn", "width": 4}, indent=2) + "\n")
    save(cnn2, "cnn-2.safetensors")
    table = fused_scope_table(fts, ScopeOptions(), "cpu", names=[f"mlp-ft-{n}.safetensors" for n in "abc"])
    atomic_write_text(out / "fused-scopes.json", table.to_json())
    print(f"wrote {out / 'fused-scopes.json'}")


if __name__ == "__main__":
    main()
