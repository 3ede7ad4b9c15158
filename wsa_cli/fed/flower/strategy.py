"""``FedAvgWSA``: Flower's FedAvg plus the WSA server step (scope fusion into next round's target).

Each round the strategy

1. sends the global model and, in the train config, the regularizer target encoded as per-layer
   scopes (:mod:`wsa_cli.fed.flower.codec`), the coefficient ``wsa-coef`` (if set) and
   ``wsa-report-scopes`` (if ``request_scopes``);
2. drops replies that carry an error or whose model does not match the global model's tensors
   (recorded in ``history`` with the node and the first mismatching layer; the round goes on);
3. averages the rest weighted by their ``num-examples`` (float64, as :func:`wsa_cli.fed.fedavg`),
   after rescaling each onto the fused scope when ``align`` is on;
4. fuses their layer scopes with the same weights (``fusion``, as ``wsa scope fuse``) into the
   next round's target, unless a fixed ``target`` was given;
5. appends a record to ``history``: participants, client drift (KL of each client's scopes to the
   fused scope), rejected clients, and the accuracy/loss of ``evaluate_fn`` when one is passed to
   :meth:`start`.

Round 1's target is the initial model's scopes. Needs Flower (``pip install 'wsa[flower]'``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from wsa_cli.fed.fedavg import align_states, fedavg, fuse_client_scopes
from wsa_cli.fed.flower.client import COEF_KEY, REPORT_KEY, SCOPES_PREFIX
from wsa_cli.fed.flower.codec import encode_scopes
from wsa_cli.fed.simulation import client_drift
from wsa_cli.fusion.fuse import FUSION_METHODS
from wsa_cli.errors import InvalidValueError
from wsa_cli.regularize.targets import scopes_of_state_dict
from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.scope.selection import LayerSelector


def mismatch(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> str | None:
    """The first layer where ``state`` differs from ``reference`` in presence or shape, as a sentence; ``None`` if it matches.

    Example:
        >>> mismatch({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
        "layer 'w' has shape (2,), the global model (3,)"
    """
    for k, ref in reference.items():
        if k not in state:
            return f"layer {k!r} is missing"
        if tuple(state[k].shape) != tuple(ref.shape):
            return f"layer {k!r} has shape {tuple(state[k].shape)}, the global model {tuple(ref.shape)}"
    extra = [k for k in state if k not in reference]
    return f"layer {extra[0]!r} is not in the global model" if extra else None


class FedAvgWSA(FedAvg):
    """FedAvg weighted by example counts, with WSA scope fusion at the server (see the module doc).

    Args:
        wsa_coef: sent to clients as ``wsa-coef`` (``None``: clients choose their own).
        fusion: how client scopes are fused (``moments``, ``precision``, ``stats-mean``).
        target: ``None`` (default) = the fused target, re-fused each round; a :class:`Scope` or a
            ``{layer: Scope}`` table = a fixed target sent every round.
        align: rescale every client's layers onto the fused scope before averaging.
        request_scopes: ask clients to report their scopes (``wsa-scopes-mean/-std`` metrics);
            when every reply has them, drift is computed from them.
        selector: which tensors are layers (default: floating, ndim >= 2).
        **fedavg: Flower's FedAvg options (``fraction_train``, ``min_train_nodes``, ...).
    """

    def __init__(
        self,
        *,
        wsa_coef: float | None = None,
        fusion: str = "moments",
        target: Scope | Mapping[str, Scope] | None = None,
        align: bool = False,
        request_scopes: bool = False,
        selector: LayerSelector | None = None,
        **fedavg: Any,
    ) -> None:
        super().__init__(**fedavg)
        if fusion not in FUSION_METHODS:
            raise InvalidValueError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSION_METHODS)}", option="fusion")
        self.wsa_coef = wsa_coef
        self.fusion = fusion
        self.fixed = target if target is None or isinstance(target, Scope) else dict(target)
        self.align = align
        self.request_scopes = request_scopes
        self.selector = selector or LayerSelector()
        self.target: Scope | dict[str, Scope] | None = self.fixed
        self.fused: dict[str, Scope] = {}
        self.history: list[dict[str, Any]] = []
        self.reference: dict[str, torch.Tensor] = {}
        self._t0 = time.perf_counter()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling, with the target (and coefficient) added to the train config."""
        self.reference = dict(arrays.to_torch_state_dict())
        self._t0 = time.perf_counter()
        if self.target is None:  # round 1 of a fused target: the initial model's scopes
            self.target = scopes_of_state_dict(self.reference, self.selector)
        config = ConfigRecord({**dict(config), **encode_scopes(self.target)})
        if self.wsa_coef is not None:
            config[COEF_KEY] = float(self.wsa_coef)
        if self.request_scopes:
            config[REPORT_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop failed or mismatching clients, FedAvg the rest, fuse their scopes (see the module doc)."""
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        rejected = [{"node": int(m.metadata.src_node_id), "reason": str(m.error.reason)} for m in failed]
        kept: list[tuple[Any, dict[str, torch.Tensor], dict[str, Any]]] = []
        for m in valid:
            node = int(m.metadata.src_node_id)
            arrays = [r for r in m.content.array_records.values()]
            metrics = next(iter(m.content.metric_records.values()), None)
            if len(arrays) != 1 or metrics is None or self.weighted_by_key not in metrics:
                rejected.append({"node": node, "reason": f"reply needs one ArrayRecord and a MetricRecord with {self.weighted_by_key!r}"})
                continue
            state = dict(arrays[0].to_torch_state_dict())
            why = mismatch(state, self.reference)
            if why is not None:
                rejected.append({"node": node, "reason": why})
                continue
            kept.append((metrics.get("partition-id", node), state, dict(metrics)))
        for r in rejected:
            log(WARNING, "FedAvgWSA round %s: client on node %s left out: %s", server_round, r["node"], r["reason"])
        record: dict[str, Any] = {"round": server_round, "rejected": rejected, "seconds": time.perf_counter() - self._t0}
        self.history.append(record)
        if not kept:
            record.update(participants=[], client_drift=[])
            return None, None
        kept.sort(key=lambda t: t[0])  # a fixed order: the float sums do not depend on arrival order
        states = [s for _, s, _ in kept]
        weights = [float(m[self.weighted_by_key]) for _, _, m in kept]
        fused, per_client = fuse_client_scopes(states, weights, method=self.fusion, selector=self.selector)
        reported = self._reported(kept, list(fused))
        averaged = fedavg(align_states(states, fused) if self.align else states, weights)
        drift = client_drift(reported or per_client, fused)
        glob = scopes_of_state_dict(averaged, self.selector)
        global_kl = [gaussian_kl(glob[k].mean, glob[k].std, f.mean, f.std) for k, f in fused.items()]
        self.fused = fused
        self.target = fused if self.fixed is None else self.fixed
        record.update(
            participants=[p for p, _, _ in kept], weights=weights, client_drift=drift,
            client_scope_kl=sum(drift) / len(drift), global_scope_kl=sum(global_kl) / max(len(global_kl), 1),
            client_metrics=[{k: v for k, v in m.items() if not k.startswith(SCOPES_PREFIX)} for _, _, m in kept],
        )  # fmt: skip
        metrics = MetricRecord({"client-scope-kl": record["client_scope_kl"], "clients": len(kept), "rejected": len(rejected)})
        return ArrayRecord(averaged), metrics

    def _reported(self, kept: list[tuple[Any, dict[str, torch.Tensor], dict[str, Any]]], keys: list[str]) -> dict[str, list[Scope]] | None:
        """Client-reported scopes per layer, when every kept reply has them for every layer."""
        mean_k, std_k = f"{SCOPES_PREFIX}-mean", f"{SCOPES_PREFIX}-std"
        if not kept or not all(mean_k in m and len(m[mean_k]) == len(keys) for _, _, m in kept):
            return None
        return {k: [Scope(float(m[mean_k][i]), float(m[std_k][i])) for _, _, m in kept] for i, k in enumerate(keys)}

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop; ``evaluate_fn``'s metrics also go into ``history`` (round 0 into ``initial``)."""
        self.initial: dict[str, Any] = {}

        def recorded(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            res = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            if res is not None:
                into = self.initial if server_round == 0 else next((h for h in self.history if h["round"] == server_round), None)
                if into is not None:
                    into.update(dict(res))
            return res

        return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                             recorded if evaluate_fn is not None else None)  # fmt: skip
