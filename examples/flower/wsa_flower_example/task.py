"""The model and data: the digits MLP and one label-skewed shard per client (from wsa's built-in task)."""

from __future__ import annotations

import functools

import torch

from wsa_cli.tasks.registry import get_task
from wsa_cli.tasks.splits import make_split

TASK = "digits-mlp"


def build_model(seed: int = 0) -> torch.nn.Module:
    """The global model's architecture (and, with seed 0, its initial weights)."""
    return get_task(TASK).build_model(None, seed=seed)


@functools.lru_cache(maxsize=2)
def shards(num_partitions: int, alpha: float) -> tuple:
    """The data and ``num_partitions`` Dirichlet(alpha) shards of its training set (seeded: the same on every node)."""
    data = get_task(TASK).load_data(0)
    return data, make_split(data.y_train, num_partitions, "dirichlet", alpha, 0)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))
