"""Why can fine-tuning lose to the global model? Fine-tune a finished run's global
model on every client with several learning rates and epochs, and compare.

    .venv/bin/python benchmarks/personalization/finetune_check.py RUN_ID \\
        --tracking-uri sqlite:///$PWD/mlflow.db

Reads the run's ``config.json`` and final ``model/global_model.pt`` (e.g. a
``finetune-a5.0`` or ``none-a5.0`` child of the personalization sweep), rebuilds the
same federated data from its config, and for each client evaluates on its own local
test part (what ``eval/client_accuracy_*`` measures):

- the global model as it is (``personalization = none``);
- copies fine-tuned with plain SGD for each ``--epochs`` x ``--lrs`` on the client's
  own training data (``personalization = finetune`` uses ``finetune-epochs`` at the run's
  ``lr``), batches seeded per client.

Prints mean, 10th percentile and minimum client accuracy per setting. Classification
tasks only.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile

import numpy as np
import torch

from fedpers.config import parse_run_config
from fedpers.data import TASKS, DataSpec, load_federated
from fedpers.seeds import Stream, derive_seed
from fedpers.training import evaluate, train_local


def summary(acc: list[float]) -> str:
    a = np.asarray(acc)
    return f"mean {a.mean():.4f}  p10 {np.percentile(a, 10):.4f}  min {a.min():.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_id")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--lrs", default="0.05,0.01,0.005", help="comma-separated")
    ap.add_argument("--epochs", default="1,3", help="comma-separated")
    args = ap.parse_args()

    import mlflow

    torch.set_num_threads(1)
    client = mlflow.MlflowClient(tracking_uri=args.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        raw = json.load(open(client.download_artifacts(args.run_id, "config.json", tmp)))
        state = torch.load(client.download_artifacts(args.run_id, "model/global_model.pt",
                                                     tmp), weights_only=True)
    cfg = parse_run_config(raw)
    fed = load_federated(DataSpec.from_config(cfg))
    if fed.kind != "classification":
        raise SystemExit(f"{cfg.task} is not a classification task")
    task = TASKS[cfg.task]
    device = torch.device("cpu")

    def fresh() -> torch.nn.Module:
        model = task.build_model(fed.input_shape, fed.num_classes)
        model.load_state_dict(state)
        return model

    print(f"run {args.run_id}: task {cfg.task}, personalization {cfg.personalization}, "
          f"partition {cfg.partition} alpha {cfg.alpha}, {cfg.num_clients} clients, "
          f"run lr {cfg.lr}, finetune-epochs {cfg.finetune_epochs}")
    base = [evaluate(fresh(), c.x_test, c.y_test, kind=fed.kind, device=device)["accuracy"]
            for c in fed.clients]
    print(f"{'global model':28s} {summary(base)}")
    for epochs in (int(e) for e in args.epochs.split(",")):
        for lr in (float(v) for v in args.lrs.split(",")):
            acc = []
            for pid, c in enumerate(fed.clients):
                model = copy.deepcopy(fresh())
                train_local(model, c.x_train, c.y_train, kind=fed.kind, epochs=epochs,
                            batch_size=cfg.batch_size, lr=lr, momentum=cfg.momentum,
                            seed=derive_seed(cfg.seed, Stream.FINETUNE, pid), device=device)
                acc.append(evaluate(model, c.x_test, c.y_test, kind=fed.kind,
                                    device=device)["accuracy"])
            delta = np.mean(acc) - np.mean(base)
            print(f"{f'fine-tune {epochs} ep, lr {lr:g}':28s} {summary(acc)}  "
                  f"({100 * delta:+.2f} points)")


if __name__ == "__main__":
    main()
