"""IID and label-skewed (Dirichlet) client splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.errors import InvalidValueError
from wsa_cli.tasks import dirichlet_split, get_task, iid_split, label_histogram, make_split

LABELS = get_task("digits-mlp").load_data(0).y_train


@settings(max_examples=25, deadline=None)
@given(clients=st.integers(1, 12), alpha=st.floats(0.05, 50.0), seed=st.integers(0, 1000))
def test_dirichlet_is_a_partition(clients, alpha, seed):
    shards = dirichlet_split(LABELS, clients, alpha, seed)
    assert len(shards) == clients
    allidx = torch.cat(shards)
    assert allidx.numel() == LABELS.numel()
    assert torch.equal(torch.sort(allidx).values, torch.arange(LABELS.numel()))
    assert min(s.numel() for s in shards) >= 2


def _skew(alpha: float, seeds=range(5)) -> float:
    """Mean over clients of the largest class share: 0.1 for IID, -> 1 for one class per client."""
    vals = []
    for seed in seeds:
        h = label_histogram(LABELS, dirichlet_split(LABELS, 8, alpha, seed)).double()
        share = h / h.sum(1, keepdim=True)
        vals.append(float(share.max(1).values.mean()))
    return sum(vals) / len(vals)


def test_label_skew_follows_alpha():
    strong, mild, weak = _skew(0.05), _skew(1.0), _skew(1000.0)
    assert strong > 0.6  # most clients are dominated by one class
    assert weak < 0.16  # near the IID value of ~0.1
    assert strong > mild > weak


def test_iid_split_has_balanced_labels_and_sizes():
    shards = iid_split(LABELS.numel(), 4, seed=0)
    sizes = [s.numel() for s in shards]
    assert max(sizes) - min(sizes) <= 1
    share = label_histogram(LABELS, shards).double()
    share = share / share.sum(1, keepdim=True)
    assert float((share - 0.1).abs().max()) < 0.05
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.arange(LABELS.numel()))


def test_splits_are_seeded():
    a = dirichlet_split(LABELS, 5, 0.3, seed=1)
    b = dirichlet_split(LABELS, 5, 0.3, seed=1)
    c = dirichlet_split(LABELS, 5, 0.3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_bad_split_arguments():
    with pytest.raises(InvalidValueError):
        make_split(LABELS, 3, "pathological")
    with pytest.raises(InvalidValueError):
        dirichlet_split(LABELS, 3, alpha=0.0)
    with pytest.raises(InvalidValueError):
        iid_split(5, 0)
    with pytest.raises(InvalidValueError):
        iid_split(3, 5)
