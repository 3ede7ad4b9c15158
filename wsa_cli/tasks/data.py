"""The built-in data: scikit-learn's digits (1,797 images of 8x8 pixels, 10 classes), no download.

The images ship inside the scikit-learn wheel, so every task works offline. Pixels (0..16) are
scaled to [0, 1]. The train/test split is stratified and fixed by ``seed`` (default 0): 1,437
training and 360 test images. Loaded arrays are cached per seed, so repeated evaluations (an
interpolation sweep evaluates dozens of models) do not reload them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from wsa_cli.errors import InvalidValueError

#: Fraction of the digits held out for testing.
TEST_FRACTION = 0.2
NUM_CLASSES = 10


@dataclass(frozen=True)
class DataSplit:
    """A fixed train/test split. ``x_*`` float32 in the model's input shape, ``y_*`` int64 labels.

    Example:
        >>> d = load_digits_split()
        >>> tuple(d.x_train.shape), d.y_train.dtype
        ((1438, 64), torch.int64)
    """

    x_train: torch.Tensor  # (N_train, *input_shape) float32
    y_train: torch.Tensor  # (N_train,) int64
    x_test: torch.Tensor  # (N_test, *input_shape) float32
    y_test: torch.Tensor  # (N_test,) int64

    def reshaped(self, shape: tuple[int, ...]) -> DataSplit:
        """The same split with inputs viewed as ``(N, *shape)`` (e.g. ``(1, 8, 8)`` for a CNN)."""
        return DataSplit(
            self.x_train.reshape(-1, *shape), self.y_train, self.x_test.reshape(-1, *shape), self.y_test
        )

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])


def _sklearn_digits():  # noqa: ANN202 - numpy arrays
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise InvalidValueError(
            "the built-in tasks need scikit-learn (it ships the digits data; a dependency of wsa): pip install scikit-learn"
        ) from None
    return load_digits(return_X_y=True)


@lru_cache(maxsize=8)
def load_digits_split(seed: int = 0) -> DataSplit:
    """Digits as flat 64-pixel vectors, split stratified 80/20 with ``seed``.

    Example:
        >>> load_digits_split(0).x_test.shape
        torch.Size([359, 64])
    """
    x, y = _sklearn_digits()
    x_t = torch.as_tensor(x, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y_t = torch.as_tensor(y, dtype=torch.int64)  # (1797,)
    gen = torch.Generator().manual_seed(int(seed))
    train_idx: list[torch.Tensor] = []
    test_idx: list[torch.Tensor] = []
    for c in range(NUM_CLASSES):  # stratified: the same test fraction of every class
        idx = torch.nonzero(y_t == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = round(idx.numel() * TEST_FRACTION)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.sort(torch.cat(train_idx)).values
    te = torch.sort(torch.cat(test_idx)).values
    return DataSplit(x_t[tr].contiguous(), y_t[tr].contiguous(), x_t[te].contiguous(), y_t[te].contiguous())
