"""APFL: adaptive personalised federated learning, a learned mix of a local and the
global model (Deng et al., arXiv 2003.13461, Algorithm 1).

The client's personalised model is ``vbar = alpha * v + (1 - alpha) * w``: ``w`` the
global model, ``v`` its own local model, ``alpha`` in [0, 1] its own mixing weight
(``apfl-alpha`` at first). Each round it (1) trains the global model it received
with the strategy's local update and uploads it, as in FedAvg, and (2) for
``local-epochs`` epochs of local SGD on the loss of ``vbar``, with ``w`` held at the
global model as received this round, steps

    v     <- v     - lr * alpha * grad f(vbar)
    alpha <- alpha - lr * <v - w, grad f(vbar)>      (then clipped to [0, 1])

(both gradients by autograd through the mix). The paper interleaves steps (1) and
(2) batch by batch; here (1) runs first through the strategy's update rule, so every
strategy composes. ``v`` and ``alpha`` live in the Context state (``"apfl-local"``,
``"apfl-alpha"``), never leave the client, and the client evaluates ``vbar`` with the
global model it is sent. ``v`` starts as the global model the first time the client
is selected. Step (2) is plain SGD (no momentum); buffers (BatchNorm statistics) are
``v``'s own. Local compute is about twice FedAvg's.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from clients.local_training import personal_budget
from clients.private_state import load_arrays, load_state, model_arrays, save_state
from fedpers.client_records import ContextRecords
from fedpers.seeds import Stream, derive_seed
from fedpers.training import batch_loss, batches

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from clients.base import LocalContext, LocalUpdate
    from fedpers.training import TrainResult

LOCAL_KEY = "apfl-local"
ALPHA_KEY = "apfl-alpha"


def mixed(v: dict[str, torch.Tensor], w: dict[str, torch.Tensor],
          alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """``alpha * v + (1 - alpha) * w`` for floating-point entries of ``w``; ``v``'s own
    value for the rest (buffers not in ``w``, integer counters)."""
    return {k: alpha * t + (1 - alpha) * w[k] if k in w and t.is_floating_point() else t
            for k, t in v.items()}


class _Mix(nn.Module):
    """``model``'s forward with the parameters ``alpha * v + (1 - alpha) * w``."""

    def __init__(self, model: nn.Module, v: dict[str, torch.Tensor],
                 w: dict[str, torch.Tensor], alpha: torch.Tensor) -> None:
        super().__init__()
        self.model, self.v, self.w, self.alpha = model, v, w, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, mixed(self.v, self.w, self.alpha), (x,))


def apfl_step(model: nn.Module, v: dict[str, torch.Tensor], w: dict[str, torch.Tensor],
              alpha: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, kind: str,
              lr: float) -> float:
    """One APFL step on a batch, in place on ``v`` and ``alpha``; returns the loss."""
    for t in (*v.values(), alpha):
        t.grad = None
    loss = batch_loss(_Mix(model, v, w, alpha), kind, xb, yb)
    loss.backward()
    with torch.no_grad():
        for t in v.values():
            if t.grad is not None:
                t.sub_(t.grad, alpha=lr)
        if alpha.grad is not None:
            alpha.sub_(alpha.grad, alpha=lr).clamp_(0.0, 1.0)
    return float(loss.detach())


def _load(local: LocalContext) -> tuple[dict[str, np.ndarray], float] | None:
    v = load_state(local, LOCAL_KEY)
    a = load_state(local, ALPHA_KEY)
    if v is None or a is None:
        return None
    return v, float(a["alpha"])


class APFL:
    def state(self, context_state: RecordDict) -> ContextRecords:
        """The local model ``v`` and the mixing weight ``alpha``."""
        return ContextRecords(context_state, [LOCAL_KEY, ALPHA_KEY])

    def private_keys(self, model: nn.Module) -> set[str]:
        return set()

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        return None

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        training = local.training
        stored = _load(local)
        v_np, alpha0 = (stored if stored is not None
                        else (model_arrays(model), local.personal.apfl_alpha))
        w = {k: t.detach().to(local.device, copy=True) for k, t in model.named_parameters()}
        result = update.train(model, local)
        frame = copy.deepcopy(model).to(local.device).train()
        v = {k: torch.tensor(np.array(a), device=local.device) for k, a in v_np.items()}
        for k in w:
            v[k].requires_grad_(True)
        alpha = torch.tensor(float(alpha0), device=local.device, requires_grad=True)
        gen = torch.Generator().manual_seed(derive_seed(local.seed, Stream.APFL_PERSONAL))
        budget = personal_budget(local, training.local_epochs)
        steps = 0
        for _ in range(training.local_epochs):
            for xb, yb in batches(local.data.x_train, local.data.y_train, training.batch_size,
                                  gen, local.device):
                if budget is not None and steps >= budget:
                    break
                apfl_step(frame, v, w, alpha, xb, yb, local.kind, training.lr)
                steps += 1
        save_state(local, LOCAL_KEY, {k: t.detach().cpu().numpy() for k, t in v.items()})
        save_state(local, ALPHA_KEY, {"alpha": np.array(float(alpha.detach()), dtype=np.float64)})
        return result

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        stored = _load(local)
        if stored is None:
            return model
        v_np, alpha = stored
        state = model.state_dict()
        v = {k: torch.as_tensor(np.array(a)) for k, a in v_np.items()}
        w = {k: state[k].detach().cpu() for k, _ in model.named_parameters()}
        personal = copy.deepcopy(model)
        load_arrays(personal, {k: t.numpy() for k, t in
                               mixed(v, w, torch.tensor(alpha)).items()})
        return personal
