"""A sqlite MLflow store with its schema made once per test process, copied per test.

MLflow's schema migrations take seconds per new store; a copy of a migrated file
takes milliseconds and is the same store.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_template: list[Path] = []


def fresh_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a new, empty, fully migrated sqlite store ``folder/name``."""
    from fedpers.tracking_store import prepare_store

    if not _template:
        path = Path(tempfile.mkdtemp(prefix="fedpers-store-template-")) / "mlflow.db"
        prepare_store(f"sqlite:///{path}", create=True)
        _template.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template[0], folder / name)
    return f"sqlite:///{folder / name}"
