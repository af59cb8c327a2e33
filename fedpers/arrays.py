"""Numpy arrays to and from Flower ``Array`` objects, byte for byte as Flower does it,
without its per-array costs.

``Array(ndarray)`` serialises with ``np.save`` and ``Array.numpy()`` reads back with
``np.load``, which builds and parses (``ast.literal_eval``) the ``.npy`` header of
every array every time: about 20 us to write and 25 us to read an array whatever
its size, paid per array of every message, on the server's one thread for every reply.
:func:`to_array` and :func:`to_numpy` cache the header per (dtype, shape, order) and
copy only the data. Their output equals Flower's exactly (same bytes in, same array
out, ``tests/test_arrays.py``); anything unusual (object or structured dtypes, empty
arrays, a header this module does not recognise, a malformed one) goes through Flower's
own path, so it fails with the same error.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedpers.engine import NUMPY_STYPE

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000  # np.load's default max_header_size
_CACHE_LIMIT = 4096

# (dtype, shape, fortran order) -> the .npy header np.save writes for it
_headers: dict[tuple[np.dtype, tuple[int, ...], bool], bytes] = {}
# .npy header bytes -> (dtype, shape, fortran order)
_layouts: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _plain(dtype: np.dtype) -> bool:
    return not dtype.hasobject and dtype.fields is None and dtype.subdtype is None


def to_array(arr: np.ndarray) -> Array:
    """``Array(arr)``, the same bytes, with the ``.npy`` header written once per layout."""
    if not isinstance(arr, np.ndarray) or not _plain(arr.dtype) or arr.size == 0:
        return Array(arr)
    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    key = (arr.dtype, tuple(arr.shape), fortran)
    header = _headers.get(key)
    body = arr.tobytes(order="F" if fortran else "C")
    if header is not None:
        data = header + body
    else:  # np.save as Array(arr) does; its header is kept when the data follows it
        buffer = io.BytesIO()
        np.save(buffer, arr, allow_pickle=False)
        data = buffer.getvalue()
        if data.endswith(body) and len(_headers) < _CACHE_LIMIT:
            _headers[key] = data[:len(data) - len(body)]
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype=NUMPY_STYPE, data=data)


def _layout(data: bytes) -> tuple[int, tuple[np.dtype, tuple[int, ...], bool]] | None:
    """(where the data starts, its layout) from a .npy header, or None for anything but
    a well-formed version 1.0 / 2.0 header of a plain non-empty dtype."""
    if data[:6] != _MAGIC or len(data) < 12 or data[7] != 0:
        return None
    major = data[6]
    if major == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
    elif major == 2:
        end = 12 + int.from_bytes(data[8:12], "little")
    else:
        return None
    if end > len(data) or end - 8 > _MAX_HEADER:
        return None
    header = data[:end]
    layout = _layouts.get(header)
    if layout is None:
        try:
            fp = io.BytesIO(header[8:])
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fp)
        except Exception:  # noqa: BLE001 - Flower's np.load says what is wrong
            return None
        if not _plain(dtype) or int(np.prod(shape)) == 0:
            return None
        layout = (dtype, tuple(shape), bool(fortran))
        if len(_layouts) < _CACHE_LIMIT:
            _layouts[header] = layout
    return end, layout


def to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``: the same array (a writable copy), parsing each header once."""
    data = array.data
    parsed = _layout(data) if array.stype == NUMPY_STYPE and isinstance(data, bytes) else None
    if parsed is None:
        return array.numpy()
    start, (dtype, shape, fortran) = parsed
    count = int(np.prod(shape))
    if len(data) - start < count * dtype.itemsize:  # truncated: np.load's error
        return array.numpy()
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start).copy()
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of a record as numpy (:func:`to_numpy`), in the record's order."""
    return {k: to_numpy(a) for k, a in record.items()}


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as an ArrayRecord (:func:`to_array`), keeping 0-d arrays 0-d.

    (``np.ascontiguousarray`` alone would turn a 0-d buffer such as BatchNorm's
    ``num_batches_tracked`` into shape (1,) and the reply would be rejected.)
    """
    return ArrayRecord({k: to_array(np.ascontiguousarray(v).reshape(np.shape(v)))
                        for k, v in arrays.items()})


__all__ = ["record_to_numpy", "to_array", "to_array_record", "to_numpy"]
