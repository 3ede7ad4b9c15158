"""The small classifiers of the built-in tasks. Their parameter names are fixed:
the spec templates, the example recipes and saved checkpoints rely on them.

``digits-mlp``: ``fc1`` (w, 64) -> ReLU -> ``fc2`` (w, w) -> ReLU -> ``fc3`` (10, w).
``digits-cnn``: ``conv1`` (c, 1, 3, 3) -> ``bn1`` -> ReLU -> ``conv2`` (2c, c, 3, 3) -> ``bn2`` -> ReLU
-> 2x2 max-pool -> ``fc`` (10, 2c * 4 * 4). Convolutions use padding 1 and no bias (BatchNorm
follows them).
``mnist1d-mlp`` / ``mnist1d-cnn``: the same shapes of network on 40-sample MNIST-1D signals
(:mod:`wsa_cli.tasks.mnist1d`); the CNN uses 1-D convolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """Two hidden layers of ``width`` units on flat 64-pixel digits (``inputs`` values per example).

    Example:
        >>> DigitsMLP(32)(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(self, width: int = 64, inputs: int = 64) -> None:
        super().__init__()
        self.width = width
        self.fc1 = nn.Linear(inputs, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)  # (B, inputs)
        x = torch.relu(self.fc1(x))  # (B, w)
        x = torch.relu(self.fc2(x))  # (B, w)
        return self.fc3(x)  # (B, 10)


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers (``c`` and ``2c`` channels) with BatchNorm, a max-pool and a linear head.

    Example:
        >>> DigitsCNN(8)(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width
        self.width = width
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * c * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 8, 8)  # (B, 1, 8, 8)
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, c, 8, 8)
        x = torch.relu(self.bn2(self.conv2(x)))  # (B, 2c, 8, 8)
        x = self.pool(x)  # (B, 2c, 4, 4)
        return self.fc(x.flatten(1))  # (B, 10)


class MNIST1DMLP(DigitsMLP):
    """``mnist1d-mlp``: ``fc1`` (w, 40) -> ReLU -> ``fc2`` (w, w) -> ReLU -> ``fc3`` (10, w), default w = 128.

    Example:
        >>> MNIST1DMLP(16)(torch.zeros(5, 40)).shape
        torch.Size([5, 10])
    """

    def __init__(self, width: int = 128) -> None:
        super().__init__(width, inputs=40)


class MNIST1DCNN(nn.Module):
    """``mnist1d-cnn``: ``conv1`` (c, 1, 5) -> ``bn1`` -> ReLU -> ``conv2`` (2c, c, 3) -> ``bn2`` -> ReLU
    -> max-pool 4 -> ``fc`` (10, 2c * 10). Padding keeps the 40 samples; convolutions have no bias.

    Example:
        >>> MNIST1DCNN(8)(torch.zeros(5, 1, 40)).shape
        torch.Size([5, 10])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width
        self.width = width
        self.conv1 = nn.Conv1d(1, c, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(c)
        self.conv2 = nn.Conv1d(c, 2 * c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(2 * c)
        self.pool = nn.MaxPool1d(4)
        self.fc = nn.Linear(2 * c * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 40)  # (B, 1, 40)
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, c, 40)
        x = torch.relu(self.bn2(self.conv2(x)))  # (B, 2c, 40)
        x = self.pool(x)  # (B, 2c, 10)
        return self.fc(x.flatten(1))  # (B, 10)
