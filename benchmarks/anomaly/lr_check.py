"""Can the fmnist-ad autoencoder learn with a given optimiser? A central check.

    .venv/bin/python benchmarks/anomaly/lr_check.py

Trains ``fedpers.models.ConvAutoencoder`` centrally (no federation) on normal
Fashion-MNIST training images (every class but ``--anomaly-classes``) with each
optimiser for ``--epochs`` epochs, and prints its final training loss and the AUROC of
its reconstruction error on the official test set (anomalies = the anomaly classes),
next to two references: the mean image's MSE (what a model that has learned nothing
but the average reaches) and a linear detector, the reconstruction error of the top
``--pca`` principal components of the normal images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fedpers.data.fmnist import load_raw
from fedpers.models import ConvAutoencoder

OPTIMISERS = {
    "sgd-0.05": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd-0.5": lambda p: torch.optim.SGD(p, lr=0.5),
    "sgd-0.05-momentum-0.9": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam-0.001": lambda p: torch.optim.Adam(p, lr=1e-3),
}


def pca_auroc(train: np.ndarray, test: np.ndarray, labels: np.ndarray, k: int) -> float:
    mu = train.mean(0)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    z = test - mu
    residual = z - (z @ vt[:k].T) @ vt[:k]
    return float(roc_auc_score(labels, np.square(residual).mean(1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anomaly-classes", default="5,7,9")
    ap.add_argument("--train", type=int, default=6000, help="normal training images used")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pca", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    anomalies = [int(c) for c in args.anomaly_classes.split(",")]
    xtr, ytr, xte, yte = load_raw()
    normal = xtr[~np.isin(ytr, anomalies)][: args.train].reshape(-1, 1, 28, 28) / 255.0
    x = torch.tensor(normal, dtype=torch.float32)
    test = torch.tensor(xte.reshape(-1, 1, 28, 28) / 255.0, dtype=torch.float32)
    labels = np.isin(yte, anomalies)
    print(f"anomaly classes {anomalies}: {len(x)} normal training images, "
          f"{labels.sum()} of {len(labels)} test images anomalous")
    print(f"mean-image MSE (learned nothing but the average): "
          f"{float(((x - x.mean(0)) ** 2).mean()):.4f}")
    print(f"linear reference, PCA-{args.pca} reconstruction error AUROC: "
          f"{pca_auroc(x.flatten(1).numpy(), test.flatten(1).numpy(), labels, args.pca):.3f}")
    for name, make in OPTIMISERS.items():
        torch.manual_seed(args.seed)
        model = ConvAutoencoder()
        opt = make(model.parameters())
        gen = torch.Generator().manual_seed(args.seed)
        started = time.perf_counter()
        total = count = 0.0
        for _ in range(args.epochs):
            perm = torch.randperm(len(x), generator=gen)
            total = count = 0.0
            for i in range(0, len(x), args.batch_size):
                xb = x[perm[i:i + args.batch_size]]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb), xb)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                count += len(xb)
        with torch.no_grad():
            err = ((model(test) - test) ** 2).mean((1, 2, 3)).numpy()
        print(f"{name:24s} last-epoch loss {total / count:.4f}  test AUROC "
              f"{roc_auc_score(labels, err):.3f}  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
