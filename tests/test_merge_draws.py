"""DARE's and DELLA's seeded draws: a fixed stream per (seed, key, model), the same read whole or in blocks."""

from __future__ import annotations

import math

import pytest
import torch

from wsa_cli.merge.draws import SeededUniform, seeded_uniform
from wsa_cli.merge.registry import MethodContext
from wsa_cli.merge.task_vectors import dare_mask


def test_the_stream_is_pinned() -> None:
    """Merges are reproducible across installs: a change of NumPy's SFC64 stream or its float64 draw fails here."""
    assert seeded_uniform(3, 12345).tolist() == [0.19120274451709907, 0.30618034325732313, 0.49135809785873485]


def test_block_reads_give_the_whole_stream() -> None:
    whole = seeded_uniform(1000, 9)
    s = SeededUniform(9)
    parts = [s.next(n).clone() for n in (1, 7, 300, 692)]
    assert torch.equal(torch.cat(parts), whole)


def test_streams_differ_by_model_and_key() -> None:
    a, b, c = (MethodContext(k, seed=0).generator_seed(i) for k, i in (("w", 0), ("w", 1), ("v", 0)))
    assert len({a, b, c}) == 3
    assert not torch.equal(seeded_uniform(50, a), seeded_uniform(50, b))


@pytest.mark.parametrize("drop_rate", [0.1, 0.5, 0.9])
def test_dare_keeps_each_entry_with_probability_one_minus_p(drop_rate: float) -> None:
    n = 200_000
    kept = int(dare_mask((n,), drop_rate, seed=4).sum())
    sd = math.sqrt(n * drop_rate * (1 - drop_rate))
    assert abs(kept - n * (1 - drop_rate)) < 5 * sd  # a binomial count: 5 standard deviations


def test_dare_mask_is_the_comparison_of_the_stream() -> None:
    u = seeded_uniform(12, 3).reshape(3, 4)
    assert torch.equal(dare_mask((3, 4), 0.5, seed=3), u >= 0.5)
