"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated offline from its published procedure.

Ten hand-made 12-point "digit" templates become 40-sample 1-D signals, each by a random chain:
append 36..60 zeros (padding), stretch to 72 points (linear interpolation), scale the amplitude by
``1 + 0.4 (u - 1/2)``, roll by 0..47 positions, fill the zero background with correlated noise
(white noise of std 0.25 smoothed by a Gaussian of width 2), add white noise of std 0.02, add a
linear shear of slope ``0.75 (u - 1/2)``, and resample to 40 points. The dataset is then
centred and scaled to unit standard deviation, and the first 80% of the shuffled samples train.

The defaults are the paper's (5,000 samples: 4,000 train / 1,000 test). We draw from NumPy's
``default_rng(seed)``, not the original's global RNG, so the signals follow the same distribution
but are not bit-identical to the published pickle; for a given seed they are identical on every
machine. Generation takes well under a second and is cached in memory per seed.

Example:
    >>> d = load_mnist1d_split(0)
    >>> tuple(d.x_train.shape), tuple(d.x_test.shape)
    ((4000, 40), (1000, 40))
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from wsa_cli.tasks.data import DataSplit

NUM_SAMPLES = 5000
TRAIN_FRACTION = 0.8
SEQ_LEN = 40
TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE = 0.25
IID_NOISE = 0.02
SHEAR = 0.75
SMOOTH_SIGMA = 2.0

#: The ten 12-point templates of the paper (digits 0..9), before whitening.
_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


def templates() -> np.ndarray:
    """``(10, 12)`` templates: each whitened, shifted to start at 0, divided by 6 (as in the paper)."""
    t = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    t = t / t.std(1, keepdims=True)
    return (t - t[:, :1]) / 6.0


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a 1-D signal onto ``n`` evenly spaced points."""
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, x.shape[0]), x)


def _smooth(noise: np.ndarray) -> np.ndarray:
    """Gaussian smoothing (sigma ``SMOOTH_SIGMA``, reflected edges) of a 1-D signal."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(noise, SMOOTH_SIGMA, mode="reflect")


def _one_signal(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    long_len = TEMPLATE_LEN + PADDING[1]  # 72
    pad = PADDING[0] + int(rng.random() * (PADDING[1] - PADDING[0] + 1))
    x = np.concatenate([template + 1e-8, np.zeros(pad)])  # the offset keeps the template's zeros apart from padding
    x = _resample(x, long_len)
    x = x * (1.0 + SCALE_COEFF * (rng.random() - 0.5))
    x = np.roll(x, int(rng.integers(MAX_TRANSLATION)))
    background = x == 0
    x = np.where(background, _smooth(CORR_NOISE * rng.standard_normal(long_len)), x)
    x = x + IID_NOISE * rng.standard_normal(long_len)
    x = x - SHEAR * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, long_len)
    return _resample(x, SEQ_LEN)


def generate_mnist1d(seed: int = 0, num_samples: int = NUM_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``(num_samples, 40)`` float64 signals (dataset-normalised) and int64 labels, shuffled.

    Example:
        >>> x, y = generate_mnist1d(0, 100)
        >>> x.shape, sorted(set(y.tolist())) == list(range(10))
        ((100, 40), True)
    """
    rng = np.random.default_rng(int(seed))
    tpl = templates()
    per_class = num_samples // len(tpl)
    xs = np.stack([_one_signal(tpl[c], rng) for c in range(len(tpl)) for _ in range(per_class)])
    ys = np.repeat(np.arange(len(tpl)), per_class)
    order = rng.permutation(ys.shape[0])
    xs, ys = xs[order], ys[order]
    return (xs - xs.mean()) / xs.std(), ys.astype(np.int64)


@lru_cache(maxsize=4)
def load_mnist1d_split(seed: int = 0) -> DataSplit:
    """The dataset of ``seed`` as a :class:`DataSplit` (first 80% train, the rest test), float32."""
    x, y = generate_mnist1d(seed)
    cut = int(round(y.shape[0] * TRAIN_FRACTION))
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    return DataSplit(xt[:cut].contiguous(), yt[:cut].contiguous(), xt[cut:].contiguous(), yt[cut:].contiguous())
