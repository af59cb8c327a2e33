"""Model families used by the tasks in :mod:`fedpers.data`.

Pure PyTorch: no data, Flower or MLflow import. Every model splits into a
``body`` (shared representation) and a ``head`` (the last layer), and names the
``state_dict`` key prefixes of its head in the class attribute ``head_prefixes``
so that personalisation methods (FedPer, FedRep, LG-FedAvg, ...) can keep the
head or the body private. Parameters are initialised from torch's global RNG,
so ``torch.manual_seed(s)`` before construction gives identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CNN", "MLP", "CharLSTM", "ConvAutoencoder", "DenseAutoencoder", "head_keys"]


def _dense_stack(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear -> ReLU`` for each consecutive pair in ``sizes``."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Multilayer perceptron classifier on flattened input.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one example (flattened inside ``forward``).
    num_classes : int
        Number of output logits.
    hidden : sequence of int
        Widths of the hidden layers (the body); the head maps the last width to
        ``num_classes``.
    """

    head_prefixes: tuple[str, ...] = ("head.",)

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        in_dim = math.prod(input_shape)
        self.body = nn.Sequential(nn.Flatten(), _dense_stack([in_dim, *hidden]))
        self.head = nn.Linear(hidden[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN(nn.Module):
    """Small LeNet-style CNN for 1x28x28 images (about 47k parameters).

    conv 1->16 5x5, max-pool 2, conv 16->32 5x5, max-pool 2, fc 512->64, head 64->classes.
    With ``norm=True`` a BatchNorm2d follows each convolution (96 more parameters and
    the running statistics): the model of task ``fmnist-bn``, for FedBN.
    """

    head_prefixes: tuple[str, ...] = ("head.",)

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 norm: bool = False) -> None:
        super().__init__()
        channels, height, width = input_shape

        def bn(n: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(n)] if norm else []

        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 5), *bn(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), *bn(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():  # (eval: the probe must not move BatchNorm's statistics)
            flat = self.body.eval()(torch.zeros(1, channels, height, width)).shape[1]
        self.body.train()
        self.body.append(nn.Linear(flat, 64))
        self.body.append(nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DenseAutoencoder(nn.Module):
    """MLP autoencoder for tabular rows, e.g. 9 -> 16 -> 4 -> 16 -> 9.

    ``forward`` returns the reconstruction, shaped like the input. The head is
    the output layer of the decoder.

    Parameters
    ----------
    input_dim : int
        Number of features.
    hidden : sequence of int
        Encoder widths down to the bottleneck (the last entry); the decoder
        mirrors them.
    """

    head_prefixes: tuple[str, ...] = ("head.",)

    def __init__(self, input_dim: int, hidden: Sequence[int] = (16, 4)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("DenseAutoencoder needs at least a bottleneck width")
        down = [input_dim, *hidden]
        up = list(reversed(hidden))
        # The bottleneck is linear (no ReLU) so no code unit can die.
        encoder = _dense_stack(down[:-1])
        encoder.append(nn.Linear(down[-2], down[-1]))
        self.body = nn.Sequential(encoder, _dense_stack(up))
        self.head = nn.Linear(up[-1], input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for 1x28x28 images in [0, 1] (about 110k parameters).

    Encoder: conv 1->16 3x3 stride 2, conv 16->32 3x3 stride 2, fc 1568 -> latent.
    Decoder: fc latent -> 1568, transposed conv 32->16, head: transposed conv
    16->1 and a sigmoid. ``forward`` returns the reconstruction.
    """

    head_prefixes: tuple[str, ...] = ("head.",)

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), latent: int = 32) -> None:
        super().__init__()
        channels, height, width = input_shape
        if height % 4 or width % 4:
            raise ValueError(f"ConvAutoencoder needs height and width divisible by 4, "
                             f"got {tuple(input_shape)}")
        inner = (32, height // 4, width // 4)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(math.prod(inner), latent),
            nn.Linear(latent, math.prod(inner)), nn.ReLU(), nn.Unflatten(1, inner),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.ConvTranspose2d(16, channels, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CharLSTM(nn.Module):
    """Next-character model: embedding 8 -> LSTM 64 -> head 64 -> characters (~25k
    parameters; LEAF's Shakespeare model, arXiv 1812.01097, with one 64-unit layer
    instead of two of 256).

    ``forward`` takes character codes (any dtype, shape ``(n, seq_len)``) and returns
    the logits of the next character from the last time step. The body is the
    embedding and the LSTM.
    """

    head_prefixes: tuple[str, ...] = ("head.",)

    def __init__(self, num_chars: int, embed: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_chars, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_chars)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.head(out[:, -1])


def head_keys(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of ``model`` that belong to its head."""
    prefixes = tuple(getattr(model, "head_prefixes", ()))
    return [k for k in model.state_dict() if prefixes and k.startswith(prefixes)]
