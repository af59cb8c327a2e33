"""fedpers.engine: the only module that touches Flower's, torch's or Ray's private API.

The scan reads the source of every module of ``fedpers``, ``strategies`` and
``clients`` with ``ast``; each wrapper gets a cheap check against the dependency it
wraps.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedpers import engine

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedpers", "strategies", "clients")
ENGINE = ROOT / "fedpers" / "engine.py"

#: Flower's public API: what these packages export (their own ``__init__``).
PUBLIC_FLWR = frozenset({"flwr.app", "flwr.serverapp", "flwr.serverapp.strategy",
                         "flwr.clientapp", "flwr.clientapp.mod", "flwr.common",
                         "flwr.simulation"})
WATCHED = ("flwr", "torch", "ray")


def _private_part(dotted: str) -> bool:
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__"))
               for p in dotted.split("."))


def _watched(module: str) -> bool:
    return module.split(".")[0] in WATCHED


def _flwr_internal(module: str) -> bool:
    return module.split(".")[0] == "flwr" and module not in PUBLIC_FLWR


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(source: str) -> list[str]:
    """Private or internal uses of Flower, torch or Ray in ``source`` (one line each)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _watched(alias.name) and (_private_part(alias.name)
                                             or _flwr_internal(alias.name)):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not _watched(node.module):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                internal = (_flwr_internal(full) if node.module == "flwr"
                            else _flwr_internal(node.module))
                if _private_part(full) or internal:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            if (_root_name(node) in WATCHED and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{node.lineno}: .{node.attr} of {_root_name(node)}")
        elif isinstance(node, ast.Subscript | ast.Call):
            # obj.__dict__["_private"] / obj.__dict__.pop("_private"): a dependency's
            # private attribute written behind its back
            target = node.value if isinstance(node, ast.Subscript) else node.func
            if isinstance(target, ast.Attribute) and target.attr in ("pop", "get", "setdefault"):
                target = target.value
            keys = ([node.slice] if isinstance(node, ast.Subscript) else node.args[:1])
            if (isinstance(target, ast.Attribute) and target.attr == "__dict__"
                    and any(isinstance(k, ast.Constant) and isinstance(k.value, str)
                            and k.value.startswith("_") for k in keys)):
                found.append(f"{node.lineno}: __dict__ private key")
    return found


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != ENGINE)


def test_no_module_but_engine_uses_a_private_flower_torch_or_ray_api():
    offenders = {str(p.relative_to(ROOT)): uses for p in _modules()
                 if (uses := private_uses(p.read_text()))}
    assert not offenders, (f"private Flower/torch/Ray API outside fedpers/engine.py (wrap it "
                           f"there): {offenders}")


def test_the_modules_scanned_include_the_ones_that_used_private_apis():
    names = {str(p.relative_to(ROOT)) for p in _modules()}
    assert {"fedpers/simulation.py", "fedpers/byte_count.py", "fedpers/client_state.py",
            "fedpers/training.py", "fedpers/virtual.py", "strategies/fednova.py"} <= names


@pytest.mark.parametrize("source", [
    "from flwr.simulation.run_simulation import _run_simulation",
    "from flwr.superlink.grid.inmemory_grid import InMemoryGrid",
    "from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects",
    "from flwr.common.serde import recorddict_to_proto",
    "import flwr.proto.recorddict_pb2",
    "from flwr.common.constant import SType",
    "from flwr import supercore",
    "from ray._private.ray_logging import global_worker_stdstream_dispatcher",
    "import torch\nx = torch._C._get_privateuse1_backend_name()",
    "from torch import _C",
    "meta.__dict__['_src_node_id'] = 1",
    "obj.__dict__.pop('_chunks', None)",
])
def test_the_scan_flags_each_private_use_fedpers_had(source):
    assert private_uses(source)


@pytest.mark.parametrize("source", [
    "from flwr.app import Array, Message",
    "from flwr.serverapp.strategy import FedAvg",
    "from flwr.clientapp import ClientApp",
    "from flwr.common import EventType",
    "from flwr import app",
    "import torch\nfrom torch import nn\nx = torch.random.default_generator",
    "from torch.func import functional_call",
    "from fedpers import _private_of_ours",
    "r.__dict__['name']",
])
def test_the_scan_passes_public_apis(source):
    assert private_uses(source) == []


def test_importing_engine_imports_no_flower_torch_or_ray():
    code = ("import sys, fedpers.engine; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'torch', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_are_flowers_own():
    from flwr.common.constant import ErrorCode, SType
    from flwr.serverapp.exception import AggregationError

    assert engine.NUMPY_STYPE == SType.NUMPY == Array(np.zeros(2)).stype
    assert engine.CLIENT_APP_EXCEPTION == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert engine.AggregationError is AggregationError
    with pytest.raises(AttributeError, match="no_such_name"):
        engine.no_such_name  # noqa: B018


def _content() -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": Array(np.arange(300, dtype=np.float32)),
                                              "b": Array(np.ones(3, dtype=np.int64))}),
                       "config": ConfigRecord({"lr": 0.1, "name": "x"})})


def test_wire_size_is_the_deflated_objects_and_drops_the_chunk_cache():
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    content = _content()
    expected = sum(len(o.deflate()) for o in get_all_nested_objects(_content()).values())
    assert engine.wire_size(content) == expected > 300 * 4
    arrays = content["arrays"]
    assert all("_chunks" not in arrays[k].__dict__ for k in ("w", "b"))


def test_recorddict_bytes_round_trip_and_are_deterministic():
    blob = engine.recorddict_to_bytes(_content())
    assert blob == engine.recorddict_to_bytes(_content())
    back = engine.recorddict_from_bytes(blob)
    np.testing.assert_array_equal(back["arrays"]["w"].numpy(), np.arange(300, dtype=np.float32))
    assert dict(back["config"]) == {"lr": 0.1, "name": "x"}


class _Factory:
    def state(self):
        return None


def test_only_the_simulation_grid_is_one_and_pulls_faster():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    grid = InMemoryGrid(_Factory())
    assert engine.is_simulation_grid(grid) and not engine.is_simulation_grid(object())
    assert engine.lower_pull_interval(grid, 0.02) and grid.pull_interval == 0.02
    assert engine.lower_pull_interval(grid, 0.05) and grid.pull_interval == 0.02  # never slower

    class Other:
        pull_interval = 0.1

    other = Other()
    assert not engine.lower_pull_interval(other, 0.02) and other.pull_interval == 0.1


@pytest.mark.usefixtures("task_identity")  # a Message outside a running app
def test_set_reply_origin_sets_sender_and_message_id():
    msg = Message(RecordDict(), dst_node_id=5, message_type="train")
    engine.set_reply_origin(msg.metadata, sender=42, message_id="abc/1")
    assert (msg.metadata.src_node_id, msg.metadata.message_id) == (42, "abc/1")
    engine.set_reply_origin(msg.metadata, sender=7)
    assert (msg.metadata.src_node_id, msg.metadata.message_id) == (7, "abc/1")


def test_flower_console_handlers_are_flowers():
    from flwr.common.logger import ConsoleHandler

    handlers = engine.flower_console_handlers()
    assert handlers and all(isinstance(h, ConsoleHandler) for h in handlers)


def test_custom_torch_backend_is_off_on_a_stock_torch():
    import torch

    assert engine.custom_torch_backend() is False
    assert torch._C._get_privateuse1_backend_name() == "privateuseone"


def test_filter_ray_worker_output_wraps_the_named_handler_once():
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp

    class Wrapped:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, data):
            self.inner({**data, "lines": data["lines"][:1]})

    seen: list[dict] = []
    disp.add_handler("fedpers-test", seen.append)
    try:
        assert engine.filter_ray_worker_output("fedpers-test", Wrapped, Wrapped)
        assert not engine.filter_ray_worker_output("fedpers-test", Wrapped, Wrapped)
        assert not engine.filter_ray_worker_output("no-such-handler", Wrapped, Wrapped)
        disp.emit({"lines": ["a", "b"]})
        assert seen == [{"lines": ["a"]}]
    finally:
        disp.remove_handler("fedpers-test")
