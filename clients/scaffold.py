"""SCAFFOLD-corrected local SGD: the client half of SCAFFOLD (Karimireddy et al.,
arXiv 1910.06378, Algorithm 1 with option II).

The server sends its control variate ``c`` as the ArrayRecord ``"control"``. The
client keeps its own ``c_i`` in its Flower Context state (``"scaffold-ci"``;
zeros the first time it is selected), adds ``c - c_i`` to the gradient of every
local step, and after ``K`` steps from ``x`` to ``y_i`` sets

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and replies with ``Δc_i = c_i+ - c_i`` as the ArrayRecord ``"control"``. With
momentum, ``K`` is the effective number of steps (``fedpers.training.
effective_steps``); stragglers use the steps they actually took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from clients.local_training import local_sgd
from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.client_records import ContextRecords
from fedpers.training import effective_steps

if TYPE_CHECKING:
    from flwr.app import RecordDict
    from torch import nn

    from clients.base import LocalContext
    from fedpers.training import TrainResult

CONTROL = "control"  # record name of c (server -> client) and Δc_i (client -> server)
STATE_KEY = "scaffold-ci"  # the client's c_i in its Context state


def _load_ci(local: LocalContext, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This client's c_i for the names in ``c`` (zeros where it has none yet)."""
    stored = local.state.array_records.get(STATE_KEY)
    old = record_to_numpy(stored) if stored is not None else {}
    return {k: old[k] if k in old and old[k].shape == v.shape else np.zeros_like(v)
            for k, v in c.items()}


class ScaffoldUpdate:
    """Local SGD corrected by ``c - c_i``; returns ``Δc_i`` next to the model."""

    def state(self, context_state: RecordDict) -> ContextRecords:
        """The client control variate ``c_i`` (record ``scaffold-ci``)."""
        return ContextRecords(context_state, [STATE_KEY])

    def train(self, model: nn.Module, local: LocalContext) -> TrainResult:
        if CONTROL not in local.server_arrays:
            raise ValueError(f"the SCAFFOLD update needs the server control variate "
                             f"{CONTROL!r} in the message (strategy 'scaffold' sends it)")
        params = dict(model.named_parameters())
        c = {k: v for k, v in local.server_arrays[CONTROL].items() if k in params}
        ci = _load_ci(local, c)
        x = {k: params[k].detach().cpu().numpy().copy() for k in c}
        correction = {k: torch.from_numpy(c[k] - ci[k]).to(local.device) for k in c}

        @torch.no_grad()
        def hook(m: nn.Module) -> None:
            for name, p in m.named_parameters():
                if name in correction and p.grad is not None:
                    p.grad.add_(correction[name])

        result = local_sgd(model, local, grad_hook=hook)
        training = local.training
        scale = 1.0 / (effective_steps(result.steps, training.momentum) * training.lr)
        params = dict(model.named_parameters())
        new_ci = {k: (ci[k] - c[k] + (x[k] - params[k].detach().cpu().numpy()) * scale)
                  .astype(c[k].dtype, copy=False) for k in c}
        local.state[STATE_KEY] = to_array_record(new_ci)
        local.reply_arrays[CONTROL] = {k: new_ci[k] - ci[k] for k in c}
        return result
