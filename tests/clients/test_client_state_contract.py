"""Explicit client state (fedpers.client_records): every registered personaliser, local
update rule and codec either declares itself stateless or round-trips its state, and the
client checkpoint walks them."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from flwr.app import RecordDict

from clients import LOCAL_UPDATES, PERSONALIZERS
from fedpers import client_records
from fedpers.arrays import to_array_record
from fedpers.client_app import client_components
from fedpers.client_pipeline import EncodeStep, RoundInputs, Upload
from fedpers.codecs import CODECS
from fedpers.config import parse_run_config
from tests.clients.personal_helpers import (
    bn_task,  # noqa: F401  (fixture)
    call_train,
    context,
    initial_arrays,
    numpy,
    run_config,
)

pytestmark = pytest.mark.usefixtures("bn_task", "task_identity")
PID = 1  # the partition personal_helpers.context serves


def _equal(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> bool:
    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys() and all(np.array_equal(a[n][k], b[n][k]) for k in a[n])
        for n in a)


@pytest.mark.parametrize("name", PERSONALIZERS.names())
def test_every_personaliser_is_stateless_or_round_trips(name):
    """After two SCAFFOLD + q8 rounds with error feedback, every record of the client's
    Context state belongs to one component, and each stateful component's state_dict
    loads into a fresh state and comes back equal."""
    run_cfg = run_config(personalization=name, strategy="scaffold", codec="q8",
                         **{"error-feedback": True})
    ctx = context(run_cfg)
    arrays = initial_arrays(run_cfg)
    for rnd in (1, 2):
        call_train(ctx, arrays, rnd)
    components = client_components(parse_run_config(run_cfg), PID)
    owners = client_records.owned_records(components, ctx.state)
    for record in ctx.state.array_records:
        mine = [comp for comp, records in owners.items() if records.owns(record)]
        assert len(mine) == 1, f"record {record!r} is owned by {mine or 'no component'}"
    personaliser = components["personalization"]
    assert client_records.is_stateless(personaliser) or owners["personalization"].state_dict()
    for comp, records in owners.items():
        saved = records.state_dict()
        fresh = RecordDict()
        components[comp].state(fresh).load_state_dict(saved)
        assert _equal(components[comp].state(fresh).state_dict(), saved), comp


@pytest.mark.parametrize("name", sorted(LOCAL_UPDATES))
def test_every_local_update_declares_its_state(name):
    client_records.require_declared(name, LOCAL_UPDATES[name])


@pytest.mark.parametrize("name", CODECS.names())
def test_every_codec_is_stateless_and_its_residual_round_trips(name):
    """Codecs hold nothing between calls (frozen dataclasses, or ``stateless``); the
    state a codec implies, the error-feedback residual, is the EncodeStep's and
    round-trips."""
    codec = CODECS.get(name)
    assert client_records.is_stateless(codec), f"codec {name} does not declare itself stateless"
    step = EncodeStep(codec, error_feedback=True, seed=0)
    state = RecordDict()
    rng = np.random.default_rng(1)
    received = {"w": rng.normal(size=(8, 8)).astype(np.float32)}
    shared = {"w": received["w"] + rng.normal(size=(8, 8)).astype(np.float32)}
    step.apply(Upload(shared, {"control": {"w": shared["w"]}}),
               RoundInputs(1, 0, received, state))
    saved = step.state(state).state_dict()
    assert bool(saved) == codec.lossy  # a lossy codec leaves residuals, a lossless none
    fresh = RecordDict()
    step.state(fresh).load_state_dict(saved)
    assert _equal(step.state(fresh).state_dict(), saved)


def test_a_component_that_does_not_declare_its_state_is_refused():
    class Forgetful:
        def train(self, model, local):  # pragma: no cover - never called
            return None

    with pytest.raises(TypeError, match="'local-update' .*Forgetful.*stateless"):
        client_records.owned_records({"local-update": Forgetful()}, RecordDict())


def test_checkpoint_then_restore_trains_as_if_never_stopped():
    """Round 3 after a restore into an empty Context equals round 3 without one."""
    run_cfg = run_config(personalization="ditto", strategy="scaffold", codec="q8",
                         **{"error-feedback": True})
    ctx = context(run_cfg)
    arrays = initial_arrays(run_cfg)
    for rnd in (1, 2):
        call_train(ctx, arrays, rnd)
    components = client_components(parse_run_config(run_cfg), PID)
    saved = client_records.checkpoint_state(components, ctx.state)
    assert set(saved.keys()) == set(ctx.state.keys())
    resumed = context(run_cfg)
    client_records.restore_state(components, resumed.state, copy.deepcopy(saved))
    want = call_train(ctx, arrays, 3).content
    got = call_train(resumed, arrays, 3).content
    for record in ("arrays", "control"):
        a, b = numpy(want[record]), numpy(got[record])
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_record_of_no_component_is_kept_and_named(caplog):
    run_cfg = run_config()
    components = client_components(parse_run_config(run_cfg), PID)
    state = RecordDict({"stray": to_array_record({"x": np.ones(1, np.float32)})})
    with caplog.at_level(logging.WARNING, logger="fedpers.client_records"):
        saved = client_records.checkpoint_state(components, state)
    assert list(saved.keys()) == ["stray"]
    assert "'stray'" in caplog.text and "no component" in caplog.text
