"""fedpers.arrays: Flower's Array <-> numpy conversions, byte for byte and array for
array as Flower's own (``Array(ndarray)`` / ``Array.numpy()``), only faster."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpers.arrays import record_to_numpy, to_array, to_array_record, to_numpy

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.linspace(-1, 1, 7).astype(np.float64),
    np.ones((2, 3, 4), np.float16),
    np.array([1, -2, 3], np.int8),
    np.array(7, np.int64),  # 0-d (BatchNorm's num_batches_tracked)
    np.array([True, False, True]),
    np.arange(6, dtype=np.uint8).reshape(2, 3),
    np.array([1 + 2j, 3 - 4j], np.complex64),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # Fortran order
    np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],  # not contiguous
    np.arange(5, dtype=">f4"),  # big-endian
    np.zeros((0, 3), np.float32),  # empty: Flower's own path
    np.zeros((1,) * 30 + (2,), np.uint8),  # many axes: a longer header
]


def _same_array(a: Array, b: Array) -> None:
    assert (a.dtype, a.shape, a.stype, a.data) == (b.dtype, b.shape, b.stype, b.data)


def _same_ndarray(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous == want.flags.c_contiguous
    assert got.flags.f_contiguous == want.flags.f_contiguous
    assert got.flags.writeable


@pytest.mark.parametrize("arr", CASES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_to_array_writes_exactly_what_flower_writes_and_to_numpy_reads_it_back(arr):
    want = Array(arr)
    for _ in range(2):  # the second call uses the cached header
        got = to_array(arr)
        _same_array(got, want)
        _same_ndarray(to_numpy(got), want.numpy())


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(dtype=st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(),
                                  hnp.boolean_dtypes(), hnp.complex_number_dtypes()),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_round_trips_match_flower_for_any_plain_array(arr):
    _same_array(to_array(arr), Array(arr))
    _same_ndarray(to_numpy(Array(arr)), Array(arr).numpy())
    fortran = np.asfortranarray(arr)
    _same_array(to_array(fortran), Array(fortran))
    _same_ndarray(to_numpy(Array(fortran)), Array(fortran).numpy())


def test_a_decoded_array_is_a_copy_not_a_view_of_the_message():
    a = Array(np.arange(4, dtype=np.float32))
    out = to_numpy(a)
    out[0] = 99.0
    assert to_numpy(a)[0] == 0.0 and a.numpy()[0] == 0.0


def _malformed() -> list[Array]:
    good = Array(np.arange(6, dtype=np.float32)).data
    header_end = 10 + int.from_bytes(good[8:10], "little")
    obj_header = good.replace(b"'<f4'", b"'|O' ")
    return [
        Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=good[:-3]),  # short
        Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=b"garbage" * 4),
        Array(dtype="float32", shape=(6,), stype="numpy.ndarray",
              data=good[:header_end - 5] + b"?" * 5 + good[header_end:]),  # bad header
        Array(dtype="float32", shape=(6,), stype="numpy.ndarray",
              data=good[:6] + b"\x09\x00" + good[8:]),  # unknown version
        Array(dtype="object", shape=(6,), stype="numpy.ndarray", data=obj_header),
        Array(dtype="float32", shape=(6,), stype="torch.Tensor", data=good),
    ]


@pytest.mark.parametrize("bad", _malformed(), ids=range(6))
def test_malformed_arrays_fail_exactly_as_flower_fails(bad):
    with pytest.raises(Exception) as want:
        bad.numpy()
    with pytest.raises(type(want.value)) as got:
        to_numpy(bad)
    assert str(got.value) == str(want.value)


def test_records_convert_in_order():
    arrays = {"w": np.ones((2, 2), np.float32), "n": np.array(3, np.int64),
              "b": np.zeros(2, np.float32)}
    record = to_array_record(arrays)
    assert list(record) == ["w", "n", "b"]
    assert record["n"].shape == ()  # 0-d stays 0-d
    back = record_to_numpy(record)
    assert list(back) == ["w", "n", "b"]
    for k, v in arrays.items():
        _same_ndarray(back[k], v)
