"""Partition training data among clients: IID, or label-skewed with a Dirichlet prior.

Label skew as in federated-learning papers (Hsu et al. 2019; Li et al. 2022, "Federated Learning
on Non-IID Data Silos"): for every class ``c``, proportions ``p_c ~ Dirichlet(alpha * 1_N)`` over
the ``N`` clients decide how that class's examples are dealt out. Small ``alpha`` (0.1) gives
clients that see mostly one or two classes; large ``alpha`` (100) approaches IID. Every example
goes to exactly one client; a client left with fewer than ``min_size`` examples triggers a redraw
(up to 100 tries), so every client can train.
"""

from __future__ import annotations

import numpy as np
import torch

from wsa_cli.errors import InvalidValueError

SPLITS = ("iid", "dirichlet")


def iid_split(n: int, clients: int, seed: int = 0) -> list[torch.Tensor]:
    """Shuffle ``range(n)`` and deal it into ``clients`` near-equal shards (sorted int64 indices).

    Example:
        >>> [len(s) for s in iid_split(10, 3)]
        [4, 3, 3]
    """
    _check(n, clients)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return [torch.sort(s).values for s in torch.tensor_split(perm, clients)]


def dirichlet_split(
    labels: torch.Tensor, clients: int, alpha: float, seed: int = 0, *, min_size: int = 2
) -> list[torch.Tensor]:
    """Label-skewed shards: class ``c`` is divided among clients in proportions ``Dir(alpha)``.

    Example:
        >>> y = torch.arange(100) % 10
        >>> sum(len(s) for s in dirichlet_split(y, 4, alpha=0.5))
        100
    """
    n = int(labels.shape[0])
    _check(n, clients)
    if not alpha > 0:
        raise InvalidValueError(f"must be > 0, got {alpha}", option="dirichlet_alpha")
    if n < clients * min_size:
        raise InvalidValueError(f"{n} examples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(int(seed))
    y = labels.cpu().numpy()
    classes = np.unique(y)
    for _ in range(100):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * idx.size).round().astype(int)  # boundaries in this class
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [torch.sort(torch.as_tensor(s, dtype=torch.int64)).values for s in shards]
    raise InvalidValueError(
        f"could not give all {clients} clients >= {min_size} examples with alpha={alpha}; "
        "use fewer clients or a larger --dirichlet-alpha"
    )


def make_split(
    labels: torch.Tensor, clients: int, split: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[torch.Tensor]:
    """Dispatch on ``split`` ("iid" or "dirichlet")."""
    if split == "iid":
        return iid_split(int(labels.shape[0]), clients, seed)
    if split == "dirichlet":
        return dirichlet_split(labels, clients, alpha, seed)
    raise InvalidValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}", option="split")


def label_histogram(labels: torch.Tensor, shards: list[torch.Tensor], num_classes: int = 10) -> torch.Tensor:
    """``(clients, classes)`` counts of each label per shard, for reports and tests."""
    return torch.stack([torch.bincount(labels[s], minlength=num_classes) for s in shards])


def _check(n: int, clients: int) -> None:
    if clients < 1:
        raise InvalidValueError(f"must be >= 1, got {clients}", option="clients")
    if clients > n:
        raise InvalidValueError(f"cannot split {n} examples among {clients} clients")
