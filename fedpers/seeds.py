"""Every random stream of a run, derived from the run seed (``seed``).

One run seed feeds many independent random choices: the data split, the model's
initial weights, which clients train each round, their mini-batch order, a codec's
stochastic rounding, attacks, DP noise, device profiles, ... Each draws from its own
stream, ``derive_seed(seed, Stream.X, *indices)``, where ``Stream.X`` names the choice
and ``indices`` (round, partition id, ...) say which instance of it. Streams are
independent, and reproducible from the run seed alone: a resumed run redraws exactly
what it would have drawn.

The tags are listed here and nowhere else, each used by one choice only (``@unique``:
two choices cannot share a tag by accident). A personaliser's streams derive from the
client's training seed of the round (``derive_seed(lc.seed, Stream.FINETUNE)``), not
from the run seed.
"""

from __future__ import annotations

from enum import IntEnum, unique

import numpy as np

__all__ = ["Stream", "derive_seed"]


@unique
class Stream(IntEnum):
    """The tag of each random stream (the first value after the seed in
    :func:`derive_seed`)."""

    # --- client training (fedpers.client_app, clients/) ------------------------
    #: a client's local training in a round (mini-batch order; indices: round, partition)
    CLIENT_TRAIN = 1
    #: stochastic rounding of a client's encoded upload (round, partition)
    UPLOAD_CODEC = 2
    #: which clients straggle (``straggler-fraction``; the same every round)
    STRAGGLERS = 3

    # --- server (fedpers.server_app) ------------------------------------------
    #: the global model's initial weights
    MODEL_INIT = 10
    #: the clients selected to train (round)
    SELECT_TRAIN = 11
    #: the clients selected to evaluate (round)
    SELECT_EVAL = 12
    #: stochastic rounding of the compressed broadcast of a training round (round)
    BROADCAST_TRAIN = 13
    #: stochastic rounding of the compressed broadcast of an evaluation (round)
    BROADCAST_EVAL = 14

    # --- simulated devices (fedpers.devices) ----------------------------------
    #: a client's drawn device profile (partition)
    DEVICE_PROFILES = 20
    #: whether a client is online (round, partition)
    DEVICE_ONLINE = 21
    #: whether a client drops out mid-round (round, partition)
    DEVICE_DROPOUT = 22

    # --- attacks and privacy (fedpers.attacks, fedpers.privacy) ----------------
    #: which clients attack (the same every round)
    ATTACKERS = 30
    #: an attack's own draws, e.g. its noise (round, partition)
    ATTACK_DRAWS = 31
    #: the server's Gaussian DP noise (round)
    DP_NOISE = 32

    # --- personalisers (clients/; derived from the client's training seed) ------
    #: fine-tuning steps of ``personalization = finetune``
    FINETUNE = 51
    #: FedRep's head epochs
    FEDREP_HEAD = 52
    #: Ditto's personal model epochs
    DITTO_PERSONAL = 53
    #: APFL's personal model and mixing weight updates
    APFL_PERSONAL = 54

    # --- data (fedpers.data) -----------------------------------------------------
    #: the global test set held out of a pooled data set
    DATA_GLOBAL_TEST = 100
    #: the partition of the pool into clients (a task's redraws: draw); Shakespeare's
    #: order of speakers
    DATA_PARTITION = 101
    #: a client's cap at ``max-samples-per-client`` (partition); npz: the client's seed
    #: of :attr:`DATA_CAP_TRAIN` and :attr:`DATA_CAP_TEST`
    DATA_CAP = 102
    #: a client's local train/test split (partition)
    DATA_LOCAL_SPLIT = 103
    #: an anomaly client's validation rows (partition)
    DATA_VALIDATION = 104
    #: the anomalies dealt to the clients' local test sets
    DATA_ANOMALIES = 105
    #: a client's contrast and brightness under ``feature-shift`` (partition)
    DATA_FEATURE_SHIFT = 106
    #: the cap of a client's given train rows (derived from the client's or speaker's seed)
    DATA_CAP_TRAIN = 107
    #: the cap of a client's given test rows (derived from the client's or speaker's seed)
    DATA_CAP_TEST = 108
    #: the cap of a Shakespeare speaker's held-out rows (derived from the speaker's seed)
    DATA_CAP_HOLDOUT = 109
    #: a Shakespeare speaker's seed: the split of its speeches (CRC-32 of play/role)
    DATA_SPEAKER = 110
    #: Shakespeare's uniform deal of the pooled windows (``partition = iid``)
    DATA_IID_DEAL = 111


def derive_seed(seed: int, *tags: int) -> int:
    """A 63-bit seed for the stream ``(seed, *tags)``, e.g. ``(seed, Stream.SELECT_TRAIN,
    round)``.

    Every value is hashed together with how many there are (NumPy's ``SeedSequence``
    over fixed 64-bit words), so ``(a, b)`` and ``(a, b, 0)`` are different streams
    (``SeedSequence`` alone pads with zeros and would not tell them apart), as are
    ``(a, 2**32 + b)`` and ``(a, b, 1)``.

    Parameters
    ----------
    seed
        The run seed, or a seed derived from it.
    *tags
        A :class:`Stream`, then the indices of the instance (round, partition, ...).
        Each value must lie in ``[0, 2**64)``.

    Returns
    -------
    int
        In ``[0, 2**63)``: a valid seed for ``np.random.default_rng``,
        ``torch.manual_seed`` and ``torch.Generator.manual_seed``.
    """
    values = (int(seed), *(int(t) for t in tags))
    if any(v < 0 or v >= 1 << 64 for v in values):
        raise ValueError(f"derive_seed: seed and tags must lie in [0, 2**64), got {values}")
    words = np.array((len(values), *values), dtype="<u8").view("<u4")
    seq = np.random.SeedSequence(words)
    return int(seq.generate_state(1, dtype=np.uint64)[0]) >> 1
