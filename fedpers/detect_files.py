"""The files ``fedpers detect`` reads and writes, each checked with one-line errors.

A detector's model metadata (:func:`read_meta`, :func:`check_meta`) and weights
(:func:`read_weights`, :func:`check_state`); the rows to score, from a CSV or ``.npy``
file (:func:`read_input`); the scores written out (:func:`write_output`). Every
problem is a :class:`DetectError` naming the file (and the row and column).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

LABEL_COLUMNS = ("anomaly", "label", "target", "y", "class")


class DetectError(ValueError):
    """The run or the input cannot be used for detection."""



def read_meta(path: Path, label: str) -> dict:
    """The model metadata JSON at ``path`` (``label`` names it in messages).

    Raises
    ------
    DetectError
        The file is missing, not JSON, or lacks a valid task, kind, input shape,
        number of classes or finite threshold.
    """
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as exc:
        raise DetectError(f"{label} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DetectError(f"{label} is not readable JSON ({type(exc).__name__}: "
                          f"{one_line(exc)})") from exc
    return check_meta(meta, label)


def check_meta(meta: object, label: str) -> dict:
    """``meta`` if it is model metadata a detector can be built from (see
    :func:`read_meta`); a :class:`DetectError` naming ``label`` otherwise."""
    if not isinstance(meta, dict):
        raise DetectError(f"{label} must hold a JSON object, got {type(meta).__name__}")
    for key in ("task", "kind"):
        if not isinstance(meta.get(key), str):
            raise DetectError(f"{label}: {key!r} must be a string, got {meta.get(key)!r}")
    shape = meta.get("input_shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                       for d in shape)):
        raise DetectError(f"{label}: 'input_shape' must be a list of positive integers, got "
                          f"{shape!r}")
    classes = meta.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise DetectError(f"{label}: 'num_classes' must be a positive integer, got "
                          f"{classes!r}")
    threshold = meta.get("threshold")
    if threshold is not None and (not isinstance(threshold, (int, float))
                                  or isinstance(threshold, bool)
                                  or not np.isfinite(threshold)):
        raise DetectError(f"{label}: 'threshold' must be a finite number, got {threshold!r}")
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict saved at ``path`` (``torch.load`` with ``weights_only``).

    Raises
    ------
    DetectError
        Naming ``path`` when it is missing, not a torch file, holds anything but
        tensors (``weights_only`` refuses pickled code), or is not a state dict.
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise DetectError(f"model weights {str(path)!r} are missing") from exc
    except Exception as exc:  # noqa: BLE001  -- torch raises many types for foreign bytes
        raise DetectError(f"{path} is not a readable model weights file "
                          f"({type(exc).__name__}: {one_line(exc)})") from exc
    return check_state(state, path)


def check_state(state: object, path: Path | str) -> dict[str, torch.Tensor]:
    """``state`` if it is a state dict (names -> tensors); a :class:`DetectError`
    naming ``path`` otherwise."""
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DetectError(f"{path} does not hold a state dict (names -> tensors), got "
                          f"{type(state).__name__}")
    return state


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_input(path: str | Path, header: bool | None = None) -> np.ndarray:
    """Rows to score, from a ``.npy`` array or a numeric CSV file.

    CSV: the first row is a header when ``header`` is True; when it is None (the
    default) only when **every** one of its cells is non-numeric. Header columns named
    like a label (``anomaly``, ``label``, ``target``, ``y``, ``class``) are dropped.
    Blank lines are skipped; every other row is scored, and output row ``i`` is the
    ``i``-th data row.

    Raises
    ------
    DetectError
        Naming the file (and the row and column): a non-numeric or non-finite cell,
        rows of different lengths, no data rows, an unreadable file, or a ``.npy``
        array that is not real numbers.
    """
    p = Path(path)
    if not p.is_file():
        raise DetectError(f"input file {str(p)!r} does not exist")
    if p.suffix == ".npy":
        return _read_npy(p)
    if p.suffix != ".csv":
        raise DetectError(f"input must be a .csv or .npy file, got {p.name!r}")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, r) for r in reader if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DetectError(f"{p} is not a readable CSV text file ({type(exc).__name__}: "
                          f"{one_line(exc)})") from exc
    if not rows:
        raise DetectError(f"{p} is empty (no rows to score)")
    first_line, first = rows[0]
    numeric = [_is_number(c) for c in first]
    if header is None:
        header = not any(numeric)
        if any(numeric) and not all(numeric):
            col = numeric.index(False)
            raise DetectError(f"{p}: row {first_line}, column {col + 1}: {first[col]!r} is "
                              f"not a number (the first row is a header only when every "
                              f"cell is text; pass --header if it is one)")
    names: list[str] | None = None
    if header:
        names = [h.strip().lower() for h in first]
        rows = rows[1:]
    width = len(first)
    keep = [i for i in range(width) if names is None or names[i] not in LABEL_COLUMNS]
    if not keep:
        raise DetectError(f"{p}: every column is a label column ({', '.join(LABEL_COLUMNS)}); "
                          f"no features to score")
    if not rows:
        raise DetectError(f"{p} holds a header but no data rows")
    data = np.empty((len(rows), len(keep)), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DetectError(f"{p}: row {line} has {len(row)} columns but the first row has "
                              f"{width}; every row needs the same columns")
        for j, col in enumerate(keep):
            try:
                value = float(row[col])
            except ValueError:
                raise DetectError(f"{p}: row {line}, column {col + 1}: {row[col]!r} is not a "
                                  f"number") from None
            if not np.isfinite(value):
                raise DetectError(f"{p}: row {line}, column {col + 1}: {row[col]!r} is not a "
                                  f"finite number")
            data[i, j] = value
    return data


def _read_npy(p: Path) -> np.ndarray:
    """A ``.npy`` array of real, finite numbers, as float64."""
    try:
        raw = np.load(p, allow_pickle=False)
    except (OSError, EOFError, ValueError, OverflowError) as exc:
        raise DetectError(f"{p} is not a readable .npy array ({type(exc).__name__}: "
                          f"{one_line(exc)})") from exc
    if not isinstance(raw, np.ndarray):
        raise DetectError(f"{p} is a .npz archive, not one .npy array")
    if raw.dtype.kind not in "biuf":
        raise DetectError(f"{p}: the array must hold real numbers, got dtype {raw.dtype}")
    if raw.size == 0:
        raise DetectError(f"{p} holds no values to score (shape {raw.shape})")
    data = raw.astype(np.float64)
    rows = data.reshape(1, -1) if data.ndim <= 1 else data.reshape(len(data), -1)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise DetectError(f"{p}: row {int(np.flatnonzero(~finite)[0])} holds a NaN or "
                          f"infinite value")
    return data


def write_output(path: str | Path, scores: np.ndarray, flags: np.ndarray) -> None:
    """Write ``row,score,anomaly`` lines to ``path``; DetectError naming it on failure."""
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", "score", "anomaly"])
            for i, (s, f) in enumerate(zip(scores, flags, strict=True)):
                writer.writerow([i, f"{s:.8g}", int(f)])
    except OSError as exc:
        raise DetectError(f"cannot write the scores to {str(path)!r}: {exc.strerror or exc}") \
            from exc
