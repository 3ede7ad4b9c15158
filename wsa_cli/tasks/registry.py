"""Registry of built-in tasks by name: how to build the model and load the data.

Example:
    >>> spec = get_task("digits-mlp")
    >>> spec.build_model(width=32, seed=0).fc1.weight.shape
    torch.Size([32, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from wsa_cli.errors import MismatchError, InvalidValueError
from wsa_cli.tasks.data import DataSplit, load_digits_split
from wsa_cli.tasks.mnist1d import load_mnist1d_split
from wsa_cli.tasks.models import DigitsCNN, DigitsMLP, MNIST1DCNN, MNIST1DMLP


@dataclass(frozen=True)
class TaskSpec:
    """One built-in task: a model family, its data, and training defaults.

    ``width`` is the hidden size of the MLP and the first conv layer's channel count of the CNN;
    ``None`` means the task's ``default_width``.
    """

    name: str
    description: str
    default_width: int
    default_epochs: int
    #: learning rate per optimizer name
    default_lr: Mapping[str, float]
    input_shape: tuple[int, ...]
    _factory: Callable[[int], nn.Module]
    _width_key: str  # the parameter whose first dimension is the width
    _loader: Callable[[int], DataSplit] = load_digits_split  # seed -> the fixed train/test split
    #: where the data comes from, for reports
    data_name: str = "scikit-learn digits (8x8 images)"

    def build_model(self, width: int | None = None, seed: int | None = None) -> nn.Module:
        """A freshly initialised model; ``seed`` fixes the initialisation (PyTorch's default init)."""
        w = self.default_width if width is None else int(width)
        if w < 1:
            raise InvalidValueError(f"must be >= 1, got {w}", option="width")
        if seed is None:
            return self._factory(w)
        # fork the RNG so that building a model does not disturb the caller's random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self._factory(w)

    def load_data(self, seed: int = 0) -> DataSplit:
        """The task's fixed train/test split, inputs in the model's input shape."""
        return self._loader(int(seed)).reshaped(self.input_shape)

    def width_of(self, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Infer the width from a state dict's shapes."""
        if self._width_key not in state_dict:
            raise MismatchError(
                f"not a {self.name} checkpoint: tensor missing (keys: {', '.join(list(state_dict)[:6])}...)",
                key=self._width_key,
            )
        return int(state_dict[self._width_key].shape[0])


TASKS: dict[str, TaskSpec] = {
    "digits-mlp": TaskSpec(
        name="digits-mlp",
        description="MLP 64-w-w-10 with ReLU on scikit-learn digits (8x8, 10 classes)",
        default_width=64,
        default_epochs=20,
        default_lr={"sgd": 0.05, "adam": 0.003},
        input_shape=(64,),
        _factory=DigitsMLP,
        _width_key="fc1.weight",
    ),
    "digits-cnn": TaskSpec(
        name="digits-cnn",
        description="CNN conv(c)-bn-relu-conv(2c)-bn-relu-maxpool-fc on scikit-learn digits",
        default_width=16,
        default_epochs=10,
        default_lr={"sgd": 0.05, "adam": 0.003},
        input_shape=(1, 8, 8),
        _factory=DigitsCNN,
        _width_key="conv1.weight",
    ),
    "mnist1d-mlp": TaskSpec(
        name="mnist1d-mlp",
        description="MLP 40-w-w-10 with ReLU on MNIST-1D (40-sample 1-D signals, 10 classes, generated offline)",
        default_width=128,
        default_epochs=60,
        default_lr={"sgd": 0.05, "adam": 0.001},
        input_shape=(40,),
        _factory=MNIST1DMLP,
        _width_key="fc1.weight",
        _loader=load_mnist1d_split,
        data_name="MNIST-1D (Greydanus 2020; 4,000 train / 1,000 test, generated with seed 0)",
    ),
    "mnist1d-cnn": TaskSpec(
        name="mnist1d-cnn",
        description="1-D CNN conv(c)-bn-relu-conv(2c)-bn-relu-maxpool-fc on MNIST-1D",
        default_width=16,
        default_epochs=30,
        default_lr={"sgd": 0.05, "adam": 0.003},
        input_shape=(1, 40),
        _factory=MNIST1DCNN,
        _width_key="conv1.weight",
        _loader=load_mnist1d_split,
        data_name="MNIST-1D (Greydanus 2020; 4,000 train / 1,000 test, generated with seed 0)",
    ),
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; an unknown name is a usage error listing the known ones.

    Example:
        >>> get_task("digits-cnn").default_width
        16
    """
    try:
        return TASKS[name]
    except KeyError:
        raise InvalidValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}", option="task") from None
