"""LoRA adapters held next to one loaded base model, chosen per request.

One base in memory with several small adapters costs far less than several merged models. The
adapters live in the model's :class:`~edge_qwen.runtime.engine.decoder.NativeDecoder` (the compute thread
applies a request's set before each step that serves it); this module loads and removes them on
that thread and turns a request's ``adapter=`` / ``adapters=`` choice into its adapter set.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..adapters import Adapter, free_adapter, load_adapter
from ..errors import ConfigError
from ..settings import adapter_files
from .request import AdapterSet

AdapterFiles = Mapping[str, "str | os.PathLike[str]"]


def adapter_set(adapter: str | None, adapters: Mapping[str, float] | None, known: set[str]) -> AdapterSet:
    """A request's adapters as a sorted set; scale 0 is the base model, so it is left out."""
    chosen: dict[str, float] = {}
    if adapter is not None:
        chosen[adapter] = 1.0
    for name, scale in (adapters or {}).items():
        chosen[name] = float(scale)
    unknown = sorted(set(chosen) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"no LoRA adapter named {', '.join(map(repr, unknown))} is loaded (loaded: {have}); "
            "load it with Model.load(..., adapters={name: path}) or model.add_adapter(name, path)"
        )
    return tuple(sorted((n, s) for n, s in chosen.items() if s != 0.0))


class AdapterSlots:
    """The adapters of one model. Loading and freeing run as tasks on the compute thread."""

    def __init__(
        self, model_ptr: Any, table: dict[str, Adapter], run: Callable[[Callable[[], Any]], Any]
    ) -> None:
        self._model = model_ptr
        self._table = table  # shared with the decoder; changed on the compute thread only
        self._run = run  # runs a function on the compute thread and returns its result
        self._names: set[str] = set()
        self._lock = threading.Lock()

    @property
    def names(self) -> set[str]:
        with self._lock:
            return set(self._names)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in list(self._table.values()))

    def add(self, name: str, path: str | os.PathLike[str]) -> None:
        (name, path_str), = adapter_files({name: path})
        with self._lock:
            if name in self._names:
                raise ConfigError(f"an adapter named {name!r} is already loaded; remove it first")
        adapter = load_adapter(self._model, Path(path_str))  # reads the file; touches no context
        self._run(lambda: self._table.__setitem__(name, adapter))
        with self._lock:
            self._names.add(name)

    def remove(self, name: str, in_use: Callable[[str], int], drop_caches: Callable[[str], None]) -> None:
        with self._lock:
            if name not in self._names:
                raise ConfigError(f"no adapter named {name!r} is loaded")

        def remove_now() -> None:
            busy = in_use(name)
            if busy:
                raise ConfigError(
                    f"{busy} requests still use the adapter {name!r}; remove it once they finish"
                )
            drop_caches(name)
            free_adapter(self._table.pop(name))

        self._run(remove_now)
        with self._lock:
            self._names.discard(name)

    def free_all(self) -> None:
        """On the compute thread, before the model is freed."""
        for adapter in self._table.values():
            free_adapter(adapter)
        self._table.clear()
