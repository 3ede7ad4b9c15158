"""The task-vector methods' whole-tensor steps: DARE's and DELLA's seeded draws (one stream per seed, key and model), TIES's selection."""

from __future__ import annotations

import math

import pytest
import torch

from wsa_cli.merge.draws import SeededUniform, seeded_uniform
from wsa_cli.merge.registry import MethodContext
from wsa_cli.merge.task_vectors import dare_mask


def test_the_stream_is_pinned() -> None:
    """Merges are reproducible across installs: a change of NumPy's SFC64 stream or of how words are cut fails here."""
    assert seeded_uniform(3, 12345).tolist() == [0.6063841735012829, 0.19120274437591434, 0.9682571047451347]


def test_words_are_the_halves_of_each_output_low_half_first() -> None:
    import numpy as np

    raw = np.random.SFC64(12345).random_raw(3)
    want = [int(w) for r in raw for w in (int(r) & 0xFFFFFFFF, int(r) >> 32)]
    assert SeededUniform(12345).words(6).tolist() == want
    assert seeded_uniform(6, 12345).tolist() == [w / 2**32 for w in want]  # u = k / 2**32, exact


@pytest.mark.parametrize("drop_rate", [0.0, 1e-12, 0.1, 1 / 3, 0.5, 0.9, 1 - 2**-40, 1.0])
def test_keep_is_the_float_comparison_of_the_stream(drop_rate: float) -> None:
    """DARE's integer test on the words decides as ``u >= drop_rate`` does, at awkward rates too (read in odd blocks)."""
    s = SeededUniform(5)
    got = torch.cat([s.keep(n, drop_rate).clone() for n in (3, 1, 4096, 5000)])
    assert torch.equal(got, seeded_uniform(9100, 5) >= drop_rate)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["gaussian", "many_zeros", "ties", "nan", "tiny_k", "all"])
def test_the_histogram_selection_finds_what_a_sort_finds(dtype: torch.dtype, case: str) -> None:
    """TIES's threshold: the k-th largest magnitude, exactly as sorting gives it, on the histogram path (n >= RADIX_MIN)."""
    from wsa_cli.merge.task_vectors import RADIX_MIN, kth_largest

    g = torch.Generator().manual_seed(2)
    n = RADIX_MIN * 3 + 7
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 0.01).abs().to(dtype)
    k = n // 3
    if case == "many_zeros":
        x[: n * 2 // 3] = 0.0
        k = n // 2  # the threshold is 0
    elif case == "ties":
        x = torch.round(x * 100) / 100  # few distinct values
    elif case == "nan":
        x[5] = float("nan")  # NumPy's order: NaN above everything
        k = 1
    elif case == "tiny_k":
        k = 1
    elif case == "all":
        k = n
    want = torch.sort(x.double(), descending=True).values[k - 1] if case != "nan" else torch.tensor(float("nan"))
    got = kth_largest(x.clone(), k)
    assert got.dtype == dtype
    assert (torch.isnan(got) and torch.isnan(want)) or float(got) == float(want)


def test_negative_values_take_the_introselect_path() -> None:
    from wsa_cli.merge.task_vectors import RADIX_MIN, kth_largest

    x = torch.linspace(-1.0, 1.0, RADIX_MIN * 2)
    assert float(kth_largest(x.clone(), 1)) == 1.0 and float(kth_largest(x.clone(), x.numel())) == -1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_della_ranks_by_the_integer_keys_as_by_the_values(dtype: torch.dtype) -> None:
    """DELLA's per-row ranks (unique integer keys for float32): the same order as a stable sort of the values."""
    from wsa_cli.merge.task_vectors import magprune_probabilities

    g = torch.Generator().manual_seed(1)
    mag = (torch.randn(6, 500, generator=g, dtype=torch.float64).abs() * 10).round().to(dtype)  # many ties and zeros
    mag[0, :7] = float("inf")
    got = magprune_probabilities(mag, 0.5, 0.2, torch.float64)
    values = torch.arange(500, dtype=torch.float64) * (0.4 / 499) + 0.3
    want = torch.empty(6, 500, dtype=torch.float64).scatter_(1, torch.argsort(mag, dim=1, stable=True), values.expand(6, 500))
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(6, 500), (3, 1), (1, 4097), (0, 5), (4, 0)])
@pytest.mark.parametrize("case", ["ties", "negative", "float64", "non-contiguous", "abs"])
def test_ascending_row_order_is_a_stable_argsort(shape: tuple[int, int], case: str) -> None:
    """The packed-key sort and its fallbacks (float64, negative values) give torch's stable argsort exactly."""
    from wsa_cli.merge.task_vectors import ascending_row_order

    g = torch.Generator().manual_seed(2)
    mag = (torch.randn(shape, generator=g).abs() * 8).round()  # ties and zeros in every row
    if mag.numel():
        mag.view(-1)[:3] = float("inf")
    if case == "negative":
        mag = mag - 4.0
    elif case == "float64":
        mag = mag.double()
    elif case == "non-contiguous":
        mag = torch.cat([mag, mag], dim=1)[:, ::2] if mag.shape[1] else mag.t().contiguous().t()
    elif case == "abs" and mag.numel():  # what DELLA passes: abs of values with -0.0 and -NaN, the check skipped
        mag = mag - 4.0
        mag.view(-1)[-2:] = torch.tensor([-0.0, -float("nan")])
        mag = mag.abs()
    got = ascending_row_order(mag, signs_clear=case == "abs")
    assert got.dtype == torch.int64 and torch.equal(got, torch.argsort(mag, dim=1, stable=True))


@pytest.mark.parametrize("drop_rate", [None, 0.3])
def test_drawing_ahead_on_a_helper_thread_gives_the_same_blocks(drop_rate: float | None) -> None:
    """Two slots (the next block drawn while this one is used) read each stream as one slot does."""
    from wsa_cli.merge.draws import block_draws

    ranges = [(0, 6), (6, 12), (12, 17)]
    dtype = torch.float64 if drop_rate is None else torch.bool

    def run(slots: int) -> list[list[torch.Tensor]]:
        bufs = [[torch.empty(6, dtype=dtype) for _ in range(2)] for _ in range(slots)]
        streams = [SeededUniform(3), SeededUniform(4)]
        return [[d.clone() for d in block] for block in block_draws(streams, ranges, bufs, drop_rate)]

    ahead, serial = run(2), run(1)
    assert len(ahead) == 3 and all(torch.equal(a, b) for x, y in zip(ahead, serial, strict=True) for a, b in zip(x, y, strict=True))
    assert torch.equal(torch.cat([blk[1] for blk in ahead]), SeededUniform(4).next(17) if drop_rate is None else SeededUniform(4).keep(17, drop_rate))


def test_a_merge_stopped_mid_tensor_leaves_no_helper_thread_running() -> None:
    import threading

    from wsa_cli.merge.draws import block_draws

    bufs = [[torch.empty(4, dtype=torch.bool)] for _ in range(2)]
    gen = block_draws([SeededUniform(1)], [(0, 4), (4, 8), (8, 12)], bufs, 0.5)
    next(gen)
    gen.close()  # what the merge's `closing(...)` does when a block raises
    assert not [t for t in threading.enumerate() if t.name.startswith("wsa-draws")]
