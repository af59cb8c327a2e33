"""fedpers.heap, seed_torch and the ServerApp's settings for the Simulation Engine
(issue 9): what is frozen is left out of collections, and only for as long as asked; the grid
pulls replies every 20 ms on the Simulation Engine only."""

from __future__ import annotations

import gc

from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedpers.heap import frozen_heap
from fedpers.server_app import SIMULATION_PULL_INTERVAL, tune_simulation_grid


def test_frozen_heap_freezes_what_is_alive_for_the_block_only():
    gc.unfreeze()
    keep = [[i] for i in range(1000)]  # tracked objects alive at the start
    with frozen_heap():
        assert gc.get_freeze_count() >= len(keep)
        garbage = []
        garbage.append(garbage)  # a cycle made inside the block is still collected
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0


def test_frozen_heap_unfreezes_after_an_error():
    gc.unfreeze()
    try:
        with frozen_heap():
            raise RuntimeError("round failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0


class _Factory:
    def state(self):
        return None


def test_only_the_simulation_grid_pulls_faster():
    grid = InMemoryGrid(_Factory())
    assert grid.pull_interval == 0.1  # Flower's default
    tune_simulation_grid(grid)
    assert grid.pull_interval == SIMULATION_PULL_INTERVAL == 0.02
    slower = InMemoryGrid(_Factory(), pull_interval=0.001)
    tune_simulation_grid(slower)
    assert slower.pull_interval == 0.001  # never slower than asked

    class GrpcGrid:  # any other grid is left alone
        pull_interval = 3.0

    other = GrpcGrid()
    tune_simulation_grid(other)
    assert other.pull_interval == 3.0


def test_seed_torch_seeds_exactly_as_torch_manual_seed():
    import torch

    from fedpers.training import seed_torch

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    want = (torch.rand(5), torch.randn(3, 3), torch.randperm(10))
    torch.manual_seed(999)  # something else in between
    seed_torch(1234)
    assert torch.equal(torch.random.get_rng_state(), state)
    got = (torch.rand(5), torch.randn(3, 3), torch.randperm(10))
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
