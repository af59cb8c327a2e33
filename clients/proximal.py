"""Proximal local SGD: the client half of FedProx (Li et al., arXiv 1812.06127).

The local objective gets the proximal term ``mu/2 * ||w - w_global||^2``, whose
gradient ``mu * (w - w_global)`` is added to every step's gradient. ``w_global``
is the model as it was when local training started (the global shared part as
sent); a personaliser's private parameters (``LocalContext.private_keys``) get no
proximal term. ``mu`` is the ``proximal-mu`` the
server sent in the message's config (Flower's FedProx sends it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clients.local_training import local_sgd

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext
    from fedpers.training import GradHook, TrainResult

MU_KEY = "proximal-mu"


def proximal_hook(model: nn.Module, mu: float, device: torch.device,
                  skip: frozenset[str] = frozenset()) -> GradHook:
    """A grad hook adding ``mu * (w - w0)``, with ``w0`` the parameters as they are now
    (parameters named in ``skip``, e.g. a personaliser's private ones, get no term): the
    gradient of ``mu/2 * ||w - w0||^2``.

    The one proximal pull of every local rule that has one: FedProx's term towards the
    global model as sent, and Ditto's pull of the personal model towards the global one
    (``clients.ditto``, ``mu = ditto-lambda``).
    """
    start = {name: p.detach().to(device, copy=True) for name, p in model.named_parameters()
             if name not in skip}

    @torch.no_grad()
    def hook(m: nn.Module) -> None:
        for name, p in m.named_parameters():
            if p.grad is not None and name in start:
                p.grad.add_(p - start[name], alpha=mu)

    return hook


class ProximalUpdate:
    """Local SGD with the FedProx proximal term; ``mu = 0`` is plain local SGD."""

    stateless = True  # nothing kept across rounds

    def train(self, model: nn.Module, local: LocalContext) -> TrainResult:
        if MU_KEY not in local.server_config:
            raise ValueError(f"the proximal update needs {MU_KEY!r} in the server's config "
                             f"(strategy 'fedprox' sends it)")
        mu = float(local.server_config[MU_KEY])
        return local_sgd(model, local, grad_hook=proximal_hook(model, mu, local.device,
                                                               local.private_keys))
