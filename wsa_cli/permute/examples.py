"""Small example architectures for trying specs (``--model wsa_cli.permute.examples:tiny_resnet``).

They exercise every case the templates and ``wsa spec infer`` handle: a Linear chain, a
VGG-style conv stack with BatchNorm (and one conv without it), and a ResNet with BatchNorm,
identity shortcuts and a downsampling shortcut (torchvision names). Input: ``(N, 3, 8, 8)`` for
the CNNs, ``(N, 16)`` for the MLP.

Example:
    >>> tiny_resnet()(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ReLU between (``fc1``, ``fc2``, ...)."""

    def __init__(self, sizes: tuple[int, ...] = (16, 32, 32, 10)) -> None:
        super().__init__()
        self.n = len(sizes) - 1
        for i in range(self.n):
            setattr(self, f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            x = getattr(self, f"fc{i + 1}")(x)
            if i < self.n - 1:
                x = torch.relu(x)
        return x


class SmallVGG(nn.Module):
    """conv1/bn1 -> ReLU -> conv2/bn2 -> ReLU -> maxpool -> conv3 (bias, no BN) -> ReLU -> fc1 -> ReLU -> fc2."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = width
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc1 = nn.Linear(2 * c * 16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, c, 8, 8)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (B, 2c, 4, 4)
        x = torch.relu(self.conv3(x))  # (B, 2c, 4, 4)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 32)
        return self.fc2(x)  # (B, 10)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn, plus the (possibly downsampled) input, relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)  # the residual stream: both summands share one group


class TinyResNet(nn.Module):
    """Stem conv1/bn1, layer1 (2 blocks, c channels), layer2 (1 block, 2c, stride 2), avgpool, fc."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = width
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(BasicBlock(c, c), BasicBlock(c, c))
        self.layer2 = nn.Sequential(BasicBlock(c, 2 * c, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, c, 8, 8)
        x = self.layer2(self.layer1(x))  # (B, 2c, 4, 4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 2c)
        return self.fc(x)


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorm layers non-trivial affine parameters and running stats (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen)
            m.bias.data = 0.1 * torch.randn(n, generator=gen)
            m.running_mean = 0.1 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen)
    return model.eval()


def mlp(seed: int = 0) -> nn.Module:
    """Factory for ``--model wsa_cli.permute.examples:mlp`` (input ``16``)."""
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random stream
        torch.manual_seed(seed)
        return MLP().eval()


def small_vgg(seed: int = 0) -> nn.Module:
    """Factory for ``--model wsa_cli.permute.examples:small_vgg`` (input ``3,8,8``)."""
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random stream
        torch.manual_seed(seed)
        return _randomize_bn(SmallVGG(), seed)


def tiny_resnet(seed: int = 0) -> nn.Module:
    """Factory for ``--model wsa_cli.permute.examples:tiny_resnet`` (input ``3,8,8``)."""
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random stream
        torch.manual_seed(seed)
        return _randomize_bn(TinyResNet(), seed)
