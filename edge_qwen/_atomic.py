"""Atomic output files: write under a temporary name in the same folder, rename when complete.

Crash safety: the temporary name is hidden, ends in ``.incomplete`` (never mistaken for output) and
carries the writer's process id, so a later writer of the same file deletes what a killed one left
behind (only when that process is gone: a concurrent writer's file is never touched). A killed
process therefore leaves the final name holding either the old file or the whole new one. (No
fsync: that guards against power loss, not kills, and would cost seconds on a multi-GB output.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TEMP = re.compile(r"^\.(?P<name>.+)\.p(?P<pid>\d+)-[0-9a-f]{8}\.incomplete$")


def incomplete_name(path: Path) -> Path:
    """The temporary sibling of ``path``; its suffix never looks like a finished output."""
    return path.with_name(f".{path.name}.p{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete")


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temporary siblings of ``path`` whose writer process no longer exists."""
    removed: list[Path] = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.p*.incomplete"))
    except OSError:
        return removed
    for tmp in candidates:
        m = _TEMP.match(tmp.name)
        if m and m.group("name") == path.name and not pid_alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on any failure
    (exception or Ctrl-C) delete it.

    >>> with atomic_path("out.gguf") as tmp:   # doctest: +SKIP
    ...     write_everything_to(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
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
