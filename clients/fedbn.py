"""FedBN: private normalisation layers (Li et al., arXiv 2102.07623).

Every state_dict entry of a normalisation layer -- ``nn.BatchNorm*``,
``nn.InstanceNorm*``, ``nn.LayerNorm``, ``nn.GroupNorm``: affine weights, biases,
running statistics and ``num_batches_tracked`` -- stays on the client (Context
state ``"fedbn-norm"``); everything else is trained by the strategy's local update
and aggregated as usual. A model with no normalisation layer has nothing to keep
private: ``private_keys`` then raises (the server checks this before the first
round), rather than silently running FedAvg.
"""

from __future__ import annotations

from torch import nn

from clients.private_state import KeepPrivate

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def norm_keys(model: nn.Module) -> set[str]:
    """The state_dict keys of ``model``'s normalisation layers."""
    keys = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            keys |= {f"{prefix}.{k}" if prefix else k
                     for k in module.state_dict(keep_vars=True)}
    return keys


class FedBN(KeepPrivate):
    state_name = "fedbn-norm"

    def private_keys(self, model: nn.Module) -> set[str]:
        keys = norm_keys(model)
        if not keys:
            raise ValueError(f"personalization 'fedbn' keeps normalisation layers private, "
                             f"but this model ({type(model).__name__}) has none; use a model "
                             f"with BatchNorm/LayerNorm/GroupNorm layers, or another "
                             f"personalization")
        return keys
