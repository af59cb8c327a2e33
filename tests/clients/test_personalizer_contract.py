"""Every personaliser, through the real ClientApp handlers on a hand-built Context:
uploads hold exactly the shared part, private state lives in the Context state and
survives between calls, private values come from that state and not from the
server, and the evaluate handler uses the personalised model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from personal_helpers import (  # noqa: F401 - bn_task: a fixture
    BN_TASK,
    bn_task,
    call_eval,
    call_train,
    context,
    copy_context,
    initial_arrays,
    numpy,
    run_config,
    state_arrays,
)

from clients import PERSONALIZERS
from fedpers.data import TASKS

pytestmark = pytest.mark.usefixtures("bn_task", "task_identity")

# methods that keep something in the Context state between rounds
STATEFUL = {"local", "fedper", "fedrep", "fedbn", "ditto", "apfl"}
# methods whose private state shapes the upload (a private head, norm layers, own model)
SHAPES_UPLOAD = {"local", "fedper", "fedrep", "fedbn"}
EXPECTED_PRIVATE = {  # on the digits-bn model (BNMLP)
    "none": set(), "local": set(), "finetune": set(), "ditto": set(), "apfl": set(),
    "fedper": {"head.weight", "head.bias"}, "fedrep": {"head.weight", "head.bias"},
    "fedbn": {f"body.2.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked")}
    | {"body.5.weight", "body.5.bias"},
}
NAMES = sorted(PERSONALIZERS)


def test_every_method_is_registered_and_covered():
    assert set(PERSONALIZERS) == set(EXPECTED_PRIVATE)
    assert list(PERSONALIZERS)[0] == "none"


def _model():
    torch.manual_seed(0)
    return TASKS[BN_TASK].build_model((64,), 10)


@pytest.mark.parametrize("name", NAMES)
def test_private_keys_are_model_keys(name):
    model = _model()
    keys = PERSONALIZERS[name].private_keys(model)
    assert keys == EXPECTED_PRIVATE[name]
    assert keys <= set(model.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_uploads_never_contain_private_keys(name):
    cfg = run_config(personalization=name)
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    private = PERSONALIZERS[name].private_keys(_model())
    for rnd in (1, 2):
        reply = call_train(ctx, x0, rnd)
        assert set(reply.content.array_records) == {"arrays"}
        sent = numpy(reply.content["arrays"])
        assert set(sent) == set(x0) - private
        for k, v in sent.items():
            assert v.shape == x0[k].shape and v.dtype == x0[k].dtype, k
        assert np.isfinite([np.sum(v) for v in sent.values()]).all()


@pytest.mark.parametrize("name", NAMES)
def test_private_state_survives_between_calls(name):
    cfg = run_config(personalization=name)
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    call_train(ctx, x0, 1)
    after_one = state_arrays(ctx.state)
    if name not in STATEFUL:
        assert after_one == {}
        return
    assert after_one, "a stateful method wrote nothing to the Context state"
    assert all(len(rec) for rec in after_one.values())
    for rec in after_one.values():
        for v in rec.values():
            assert np.isfinite(v).all()
    # round 2 on the kept state vs on a fresh Context: the state is read
    kept, fresh = copy_context(ctx), context(cfg)
    up_kept = numpy(call_train(kept, x0, 2).content["arrays"])
    up_fresh = numpy(call_train(fresh, x0, 2).content["arrays"])
    s_kept, s_fresh = state_arrays(kept.state), state_arrays(fresh.state)
    assert set(s_kept) == set(s_fresh) == set(after_one)
    assert any(not np.array_equal(s_kept[r][k], s_fresh[r][k])
               for r in s_kept for k in s_kept[r] if np.issubdtype(s_kept[r][k].dtype,
                                                                   np.floating))
    differs = any(not np.array_equal(up_kept[k], up_fresh[k]) for k in up_kept)
    assert differs == (name in SHAPES_UPLOAD)  # ditto/apfl: the upload ignores v


@pytest.mark.parametrize("name", sorted(SHAPES_UPLOAD))
def test_private_values_come_from_the_state_not_the_server(name):
    """What the server holds for the private names (or for everything, for 'local')
    does not change what the client does in a later round."""
    cfg = run_config(personalization=name)
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    call_train(ctx, x0, 1)
    ignored = set(x0) if name == "local" else PERSONALIZERS[name].private_keys(_model())
    other = {k: (v + 3 if k in ignored and v.dtype.kind == "f" else v) for k, v in x0.items()}
    a, b = copy_context(ctx), copy_context(ctx)
    up_a = numpy(call_train(a, x0, 2).content["arrays"])
    up_b = numpy(call_train(b, other, 2).content["arrays"])
    for k in up_a:
        np.testing.assert_array_equal(up_a[k], up_b[k], err_msg=k)
    sa, sb = state_arrays(a.state), state_arrays(b.state)
    for r in sa:
        for k in sa[r]:
            np.testing.assert_array_equal(sa[r][k], sb[r][k], err_msg=f"{r}/{k}")


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_uses_the_personalised_model(name):
    cfg = run_config(personalization=name)
    x0 = initial_arrays(cfg)
    trained = context(cfg)
    call_train(trained, x0, 1)
    personal = call_eval(trained, x0, 1)
    plain = call_eval(context(cfg), x0, 1)  # never trained: no state
    assert {"accuracy", "loss", "num-examples", "partition-id"} <= set(personal)
    if name in STATEFUL:
        assert personal["loss"] != plain["loss"]
    elif name == "finetune":  # fine-tunes a fresh copy each time: no state needed
        assert personal["loss"] == plain["loss"]
        assert plain["loss"] != call_eval(context(run_config()), x0, 1)["loss"]
    else:
        assert personal["loss"] == plain["loss"]
    # evaluating changes no state
    before = state_arrays(trained.state)
    call_eval(trained, x0, 1)
    after = state_arrays(trained.state)
    assert before.keys() == after.keys()
    for r in before:
        for k in before[r]:
            np.testing.assert_array_equal(before[r][k], after[r][k])


def test_fedbn_keeps_zero_d_buffers_zero_d():
    ctx = context(run_config(personalization="fedbn"))
    call_train(ctx, initial_arrays(ctx.run_config), 1)
    kept = state_arrays(ctx.state)["fedbn-norm"]
    assert kept["body.2.num_batches_tracked"].shape == ()
    from fedpers.config import parse_run_config
    from fedpers.data import DataSpec, load_federated

    n = load_federated(DataSpec.from_config(parse_run_config(ctx.run_config))).clients[1].num_train
    assert int(kept["body.2.num_batches_tracked"]) == -(-n // 10)  # one per batch of 10


def test_fedbn_without_norm_layers_fails_clearly():
    from fedpers.models import MLP

    with pytest.raises(ValueError, match="fedbn.*has none"):
        PERSONALIZERS["fedbn"].private_keys(MLP((64,), 10))
