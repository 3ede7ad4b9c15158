"""Federated simulation: FedAvg over label-skewed clients, with WSA scope regularization as an option.

Example:
    >>> from wsa_cli.fed import FedConfig, run_fedsim
    >>> res = run_fedsim(FedConfig(rounds=1, clients=2, local_epochs=1, width=8))
    >>> len(res.rounds)
    1
"""

from wsa_cli.fed.experiment import FedsimResult, run_comparison
from wsa_cli.fed.fedavg import align_states, fedavg, fuse_client_scopes
from wsa_cli.fed.simulation import FedConfig, FedResult, RoundResult, client_drift, run_fedsim, sample_clients

__all__ = [
    "FedConfig", "FedResult", "FedsimResult", "RoundResult", "align_states", "client_drift", "fedavg", "fuse_client_scopes",
    "run_comparison", "run_fedsim", "sample_clients",
]  # fmt: skip
