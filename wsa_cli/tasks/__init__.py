"""Built-in example tasks: small digits classifiers that train offline in seconds.

Example:
    >>> from wsa_cli.tasks import train_model, evaluate
    >>> state, metrics = train_model("digits-mlp", seed=1, epochs=5, width=32)
    >>> evaluate("digits-mlp", state, "cpu")["accuracy"] > 0.8
    True
"""

from wsa_cli.tasks.data import DataSplit, load_digits_split
from wsa_cli.tasks.evaluate import evaluate, evaluate_model, model_from_state_dict, recalibrate_batchnorm, task_evaluator
from wsa_cli.tasks.registry import TASKS, TaskSpec, get_task
from wsa_cli.tasks.splits import SPLITS, dirichlet_split, iid_split, label_histogram, make_split
from wsa_cli.tasks.train import OPTIMIZERS, train_model

__all__ = [
    "OPTIMIZERS",
    "SPLITS",
    "TASKS",
    "DataSplit",
    "TaskSpec",
    "dirichlet_split",
    "evaluate",
    "evaluate_model",
    "get_task",
    "iid_split",
    "label_histogram",
    "load_digits_split",
    "make_split",
    "model_from_state_dict",
    "recalibrate_batchnorm",
    "task_evaluator",
    "train_model",
]
