"""Golden numbers for each personalisation rule on one-parameter models (x = 1,
``kind="anomaly"``, so the loss is (w - 1)^2 and its gradient 2 (w - 1))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from personal_helpers import local_context, one_weight, weight
from torch import nn

from clients import PERSONALIZERS
from clients.apfl import ALPHA_KEY, LOCAL_KEY, apfl_step
from clients.ditto import STATE_KEY as DITTO_KEY
from clients.fedbn import norm_keys
from clients.local import STATE_KEY as LOCAL_MODEL_KEY
from clients.private_state import load_state, save_state
from clients.proximal import ProximalUpdate
from clients.sgd import SGDUpdate

X1 = np.ones((1, 1), np.float32)
ONE_STEP = {"lr": 0.1, "batch-size": 1, "local-epochs": 1}


# ------------------------------------------------------------------ APFL
def test_apfl_mixing_gradients():
    """v = 1, w = 0, alpha = 0.5: vbar = 0.5, dL/dvbar = 2 (0.5 - 1) = -1, so
    dL/dv = alpha * -1 = -0.5 and dL/dalpha = (v - w) * -1 = -1; lr 0.1."""
    model = one_weight(0.0)
    v = {"weight": torch.tensor([[1.0]], requires_grad=True)}
    w = {"weight": torch.tensor([[0.0]])}
    alpha = torch.tensor(0.5, requires_grad=True)
    x = torch.ones(1, 1)
    loss = apfl_step(model, v, w, alpha, x, x, "anomaly", lr=0.1)
    assert loss == pytest.approx(0.25)
    assert float(v["weight"].detach()) == pytest.approx(1.05)
    assert float(alpha.detach()) == pytest.approx(0.6)
    assert weight(model) == 0.0  # the frame model is only a structure


def test_apfl_alpha_stays_in_the_unit_interval():
    model = one_weight(0.0)
    v = {"weight": torch.tensor([[3.0]], requires_grad=True)}
    w = {"weight": torch.tensor([[-3.0]])}
    alpha = torch.tensor(0.99, requires_grad=True)  # vbar = 2.94: d/dalpha = 6 * 3.88 > 0
    apfl_step(model, v, w, alpha, torch.ones(1, 1), torch.ones(1, 1), "anomaly", lr=1.0)
    assert float(alpha.detach()) == 0.0
    alpha = torch.tensor(0.01, requires_grad=True)
    v = {"weight": torch.tensor([[-3.0]], requires_grad=True)}
    w = {"weight": torch.tensor([[3.0]])}  # vbar = 2.94, d/dalpha = -6 * 3.88 < 0
    apfl_step(model, v, w, alpha, torch.ones(1, 1), torch.ones(1, 1), "anomaly", lr=1.0)
    assert float(alpha.detach()) == 1.0


def test_apfl_round_uploads_the_global_copy_and_keeps_v_and_alpha():
    lc = local_context(x=X1, **ONE_STEP, **{"apfl-alpha": 0.5})
    save_state(lc, LOCAL_KEY, {"weight": np.array([[1.0]], np.float32)})
    save_state(lc, ALPHA_KEY, {"alpha": np.array(0.5)})
    model = one_weight(0.0)
    PERSONALIZERS["apfl"].train(model, SGDUpdate(), lc)
    assert weight(model) == pytest.approx(0.2)  # w: 0 - 0.1 * 2 (0 - 1), uploaded
    assert load_state(lc, LOCAL_KEY)["weight"].item() == pytest.approx(1.05)
    alpha = load_state(lc, ALPHA_KEY)["alpha"]
    assert alpha.shape == () and float(alpha) == pytest.approx(0.6)
    # evaluation mixes v with the global model it is sent: 0.6 * 1.05 + 0.4 * 0.2
    mixed = PERSONALIZERS["apfl"].eval_model(one_weight(0.2), lc)
    assert weight(mixed) == pytest.approx(0.6 * 1.05 + 0.4 * 0.2)


def test_apfl_starts_from_the_global_model_and_apfl_alpha():
    lc = local_context(x=X1, **ONE_STEP, **{"apfl-alpha": 0.25})
    model = one_weight(0.0)
    assert PERSONALIZERS["apfl"].eval_model(model, lc) is model  # nothing kept yet
    PERSONALIZERS["apfl"].train(model, SGDUpdate(), lc)
    # v = w = 0, alpha = 0.25: vbar = 0, dL/dvbar = -2: v += 0.1 * 0.25 * 2, alpha unchanged
    assert load_state(lc, LOCAL_KEY)["weight"].item() == pytest.approx(0.05)
    assert float(load_state(lc, ALPHA_KEY)["alpha"]) == pytest.approx(0.25)


# ------------------------------------------------------------------ Ditto
def test_ditto_proximal_pull():
    """v = 0.5, w = 0, lambda = 1: grad = 2 (0.5 - 1) + 1 * (0.5 - 0) = -0.5."""
    lc = local_context(x=X1, **ONE_STEP, **{"ditto-lambda": 1.0})
    save_state(lc, DITTO_KEY, {"weight": np.array([[0.5]], np.float32)})
    model = one_weight(0.0)
    PERSONALIZERS["ditto"].train(model, SGDUpdate(), lc)
    assert weight(model) == pytest.approx(0.2)  # the global copy: plain SGD, uploaded
    assert load_state(lc, DITTO_KEY)["weight"].item() == pytest.approx(0.55)
    assert weight(PERSONALIZERS["ditto"].eval_model(model, lc)) == pytest.approx(0.55)


@pytest.mark.parametrize(("lam", "expected"), [(0.0, 0.6), (9.0, 0.15)])
def test_ditto_lambda_zero_is_local_and_large_lambda_holds_v_at_w(lam, expected):
    """lambda 0: 0.5 + 0.1 * 1 = 0.6; lambda 9: 0.5 - 0.1 * (-1 + 4.5) = 0.15."""
    lc = local_context(x=X1, **ONE_STEP, **{"ditto-lambda": lam})
    save_state(lc, DITTO_KEY, {"weight": np.array([[0.5]], np.float32)})
    PERSONALIZERS["ditto"].train(one_weight(0.0), SGDUpdate(), lc)
    assert load_state(lc, DITTO_KEY)["weight"].item() == pytest.approx(expected)


# ------------------------------------------------------------------ FedRep
class Tiny(nn.Module):
    """f(x) = head * body * x."""

    head_prefixes = ("head.",)

    def __init__(self, body: float, head: float) -> None:
        super().__init__()
        self.body = one_weight(body)
        self.head = one_weight(head)

    def forward(self, x):
        return self.head(self.body(x))


class Spy:
    """A local update that records what it sees, then runs plain SGD."""

    def __init__(self):
        self.seen = {}

    def train(self, model, lc):
        self.seen = {"body": weight(model.body), "head": weight(model.head),
                     "grad": {n: p.requires_grad for n, p in model.named_parameters()}}
        return SGDUpdate().train(model, lc)


def test_fedrep_trains_the_head_first_then_the_body():
    """body 1, head 0.5, x = 1: loss (hb - 1)^2. Head step: d/dh = 2 (0.5 - 1) * 1 = -1
    -> head 0.6; body step: d/db = 2 (0.6 - 1) * 0.6 = -0.48 -> body 1.048."""
    lc = local_context(x=X1, **ONE_STEP, **{"fedrep-head-epochs": 1})
    model, spy = Tiny(1.0, 0.5), Spy()
    PERSONALIZERS["fedrep"].train(model, spy, lc)
    assert spy.seen["body"] == 1.0 and spy.seen["head"] == pytest.approx(0.6)
    assert spy.seen["grad"] == {"body.weight": True, "head.weight": False}
    assert weight(model.body) == pytest.approx(1.048)
    assert weight(model.head) == pytest.approx(0.6)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards
    assert set(load_state(lc, "fedrep-head")) == {"head.weight"}
    # the next round restores the head over whatever the server holds
    fresh = Tiny(1.0, -7.0)
    PERSONALIZERS["fedrep"].prepare(fresh, lc)
    assert weight(fresh.head) == pytest.approx(0.6)


def test_fedper_trains_head_and_body_together():
    lc = local_context(x=X1, **ONE_STEP)
    model = Tiny(1.0, 0.5)
    PERSONALIZERS["fedper"].train(model, SGDUpdate(), lc)
    # d/dh = 2 (0.5 - 1) * 1 = -1, d/db = 2 (0.5 - 1) * 0.5 = -0.5, same step
    assert weight(model.head) == pytest.approx(0.6)
    assert weight(model.body) == pytest.approx(1.05)
    assert load_state(lc, "fedper-head")["head.weight"].item() == pytest.approx(0.6)


# ------------------------------------------------------------------ FedProx on the shared part
def test_proximal_term_skips_private_parameters():
    """mu = 1 pulls only the body: after one SGD step from (1, 0.5) the head moves as
    plain SGD (the pull is 0 at the start anyway), and over two steps it differs."""
    cfg = {"lr": 0.1, "batch-size": 1, "local-epochs": 2}
    x = np.ones((1, 1), np.float32)
    results = {}
    for private in (frozenset(), frozenset({"head.weight"})):
        lc = local_context(x=x, private_keys=private, **cfg)
        lc.server_config["proximal-mu"] = 1.0
        model = Tiny(1.0, 0.5)
        ProximalUpdate().train(model, lc)
        results[private] = (weight(model.body), weight(model.head))
    plain = local_context(x=x, **cfg)
    model = Tiny(1.0, 0.5)
    SGDUpdate().train(model, plain)
    no_term = (weight(model.body), weight(model.head))
    shared_only = results[frozenset({"head.weight"})]
    everything = results[frozenset()]
    assert shared_only != everything
    assert shared_only != no_term
    # by hand, shared-only: step 1 (b, h) = (1.05, 0.6); step 2 grads: d/db = 2(0.63-1)0.6
    # + (1.05 - 1) = -0.394, d/dh = 2(0.63-1)1.05 = -0.777 -> (1.0894, 0.6777)
    assert shared_only == pytest.approx((1.0894, 0.6777))


# ------------------------------------------------------------------ FedBN, local, finetune
def test_norm_keys_find_every_norm_layer():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 3),
                          nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.Linear(3, 1))
    assert norm_keys(model) == {
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "3.weight", "3.bias", "4.weight", "4.bias"}
    assert norm_keys(nn.Sequential(nn.LayerNorm(2, elementwise_affine=False))) == set()


def test_local_restores_its_own_model_over_the_broadcast():
    lc = local_context(x=X1, **ONE_STEP)
    model = one_weight(0.0)
    PERSONALIZERS["local"].train(model, SGDUpdate(), lc)
    assert load_state(lc, LOCAL_MODEL_KEY)["weight"].item() == pytest.approx(0.2)
    broadcast = one_weight(-5.0)
    PERSONALIZERS["local"].prepare(broadcast, lc)
    assert weight(broadcast) == pytest.approx(0.2)


def test_finetune_evaluates_a_tuned_copy():
    lc = local_context(x=X1, **ONE_STEP, **{"finetune-epochs": 2})
    model = one_weight(0.0)
    tuned = PERSONALIZERS["finetune"].eval_model(model, lc)
    assert weight(model) == 0.0  # the global model is untouched
    assert weight(tuned) == pytest.approx(0.36)  # 0 -> 0.2 -> 0.2 + 0.1 * 1.6
    assert dict(lc.state.array_records) == {}


def test_finetune_lr_replaces_the_training_lr_for_fine_tuning_only():
    lc = local_context(x=X1, **ONE_STEP, **{"finetune-epochs": 2, "finetune-lr": 0.05})
    tuned = PERSONALIZERS["finetune"].eval_model(one_weight(0.0), lc)
    assert weight(tuned) == pytest.approx(0.19)  # 0 -> 0.1 -> 0.1 + 0.05 * 1.8


def test_stragglers_do_a_share_of_the_extra_passes_too():
    from clients.local_training import personal_budget

    x = np.ones((10, 1), np.float32)
    lc = local_context(x=x, partition_id=0, **{"num-clients": 1, "straggler-fraction": 1.0,
                                                "straggler-work": 0.5, "batch-size": 2})
    assert personal_budget(lc, 3) == 7  # floor(0.5 * 3 epochs * 5 batches)
    lc = local_context(x=x, **{"batch-size": 2})
    assert personal_budget(lc, 3) is None
