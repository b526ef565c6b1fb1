"""Atomic output files: write under a temporary name in the same folder, rename when complete."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def incomplete_name(path: Path) -> Path:
    """The temporary sibling of ``path``; its suffix never looks like a finished output."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.incomplete")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on any failure delete it.

    >>> with atomic_path("out.gguf") as tmp:   # doctest: +SKIP
    ...     write_everything_to(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = incomplete_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as pretty JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
