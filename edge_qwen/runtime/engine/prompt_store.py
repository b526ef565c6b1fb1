"""The prompt cache on disk, so that a restart does not forget every conversation.

A desktop app that restarts would otherwise prefill its long system prompt and each open
conversation again. With a directory, every cache the prompt cache keeps (:mod:`.prompt_cache`),
and each slot's cache when the model closes, is also written here; the next load of the same
model reads them back (newest first, up to the memory budget), and a returning conversation is
restored instead of prefilled.

A file holds one cache: a JSON header line (the store key, token count, byte sizes and the
payload's sha256), then the tokens (int32), the sequence state and a hybrid model's checkpoints.
The key is the model file's sha256, the llama.cpp build and the K/V cache types: a state is only
ever given back to the model and build that wrote it. A file that is truncated, corrupt, written
for another key or not ours at all is skipped with a log line, never loaded. Files are written
under a temporary name and renamed (on a writer thread: the compute thread only hands the bytes
over), and the directory keeps to a byte budget, oldest first out. Caches computed under a LoRA
adapter are not written: an adapter file of the same name may hold other weights next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._atomic import atomic_path
from .checkpoints import Checkpoint
from .prompt_cache import SavedPrompt

log = logging.getLogger("edge_qwen.prompt_cache")

SUFFIX = ".eqpc"
FORMAT = 1
MAX_HEADER = 1 << 16


@dataclass(frozen=True)
class StoreKey:
    """What a saved state is only valid for: this model file, this llama.cpp build, these cache types."""

    model_sha256: str
    build: str
    cache_types: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.model_sha256}|{self.build}|{self.cache_types}".encode()).hexdigest()


class PromptStore:
    """Saved prompt caches of one model under ``directory``, at most ``budget_bytes`` of them."""

    def __init__(self, directory: str | os.PathLike[str], key: StoreKey, budget_bytes: int) -> None:
        self.key = key
        self.folder = Path(directory).expanduser() / key.digest[:16]
        self.budget = max(0, int(budget_bytes))
        self._queue: queue.Queue[SavedPrompt | None] = queue.Queue()
        self._writer: threading.Thread | None = None

    # -- reading ----------------------------------------------------------------------------------

    def load(self, limit_bytes: int) -> list[SavedPrompt]:
        """The saved caches, newest first, as many as fit in ``limit_bytes``; bad files are skipped."""
        out: list[SavedPrompt] = []
        used = 0
        for path in sorted(self._files(), key=_mtime, reverse=True):
            entry = self._read(path)
            if entry is None or used + entry.size > limit_bytes:
                continue
            out.append(entry)
            used += entry.size
        return out

    def _read(self, path: Path) -> SavedPrompt | None:
        try:
            with path.open("rb") as f:
                header = json.loads(f.readline(MAX_HEADER).decode("utf-8"))
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise ValueError("not a prompt-cache file of this edge-qwen")
                if header.get("key") != self.key.digest:
                    raise ValueError("written for another model file or llama.cpp build")
                n_tokens, state_bytes = int(header["n_tokens"]), int(header["state_bytes"])
                marks = [int(n) for n in header.get("checkpoints") or []]
                sizes = [int(s) for s in header.get("checkpoint_bytes") or []]
                if len(marks) != len(sizes) or min([n_tokens, state_bytes, *marks, *sizes], default=0) < 0:
                    raise ValueError("inconsistent sizes")
                payload = f.read(4 * n_tokens + state_bytes + sum(sizes) + 1)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("prompt cache: skipped %s (%s)", path.name, exc)
            return None
        if len(payload) != 4 * n_tokens + state_bytes + sum(sizes):
            log.warning("prompt cache: skipped %s (truncated or overlong)", path.name)
            return None
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            log.warning("prompt cache: skipped %s (its contents do not match their checksum)", path.name)
            return None
        tokens = tuple(int(t) for t in np.frombuffer(payload[: 4 * n_tokens], dtype="<i4"))
        pos = 4 * n_tokens + state_bytes
        state = payload[4 * n_tokens : pos]
        checkpoints = []
        for n, size in zip(marks, sizes, strict=True):
            checkpoints.append(Checkpoint(n, payload[pos : pos + size]))
            pos += size
        recurrent = bool(header.get("recurrent"))
        return SavedPrompt(tokens, (), state, checkpoints=tuple(checkpoints) if recurrent else None)

    # -- writing ----------------------------------------------------------------------------------

    def put(self, entry: SavedPrompt) -> None:
        """Write ``entry`` soon, on the writer thread (not under a LoRA adapter: see the module doc)."""
        if entry.key or not self.budget or entry.size > self.budget:
            return
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_all, name="edge-qwen-prompt-store", daemon=True
            )
            self._writer.start()
        self._queue.put(entry)

    def flush(self) -> None:
        """Wait until everything handed to :meth:`put` is on disk."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def _write_all(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                self._write(entry)
            except OSError as exc:
                log.warning("prompt cache: could not write to %s (%s)", self.folder, exc)

    def _write(self, entry: SavedPrompt) -> None:
        marks = entry.checkpoints or ()
        tokens = np.asarray(entry.tokens, dtype="<i4").tobytes()
        payload = b"".join([tokens, entry.state, *(c.state for c in marks)])
        header = {
            "format": FORMAT, "key": self.key.digest, "n_tokens": len(entry.tokens),
            "state_bytes": len(entry.state), "recurrent": entry.checkpoints is not None,
            "checkpoints": [c.n_tokens for c in marks], "checkpoint_bytes": [c.size for c in marks],
            "sha256": hashlib.sha256(payload).hexdigest(), "written": time.time(),
        }  # fmt: skip
        path = self.folder / (hashlib.sha256(tokens).hexdigest()[:32] + SUFFIX)
        with atomic_path(path) as tmp:
            with tmp.open("wb") as f:
                f.write(json.dumps(header).encode("utf-8") + b"\n")
                f.write(payload)
        self._drop_covered(path, entry.tokens)
        self._keep_to_budget()

    def _drop_covered(self, kept: Path, tokens: Sequence[int]) -> None:
        """A cache that is a prefix of the one just written is redundant (as in memory)."""
        for path in self._files():
            if path == kept:
                continue
            head = _token_head(path)
            if head is not None and len(head) <= len(tokens) and tuple(tokens[: len(head)]) == head:
                path.unlink(missing_ok=True)

    def _keep_to_budget(self) -> None:
        files = sorted(self._files(), key=_mtime)
        total = sum(_size(p) for p in files)
        for path in files:
            if total <= self.budget:
                break
            total -= _size(path)
            path.unlink(missing_ok=True)

    def _files(self) -> Iterable[Path]:
        return self.folder.glob("*" + SUFFIX) if self.folder.is_dir() else ()


def _token_head(path: Path) -> tuple[int, ...] | None:
    """A file's tokens (read without its state), or None when it is not readable."""
    try:
        with path.open("rb") as f:
            header = json.loads(f.readline(MAX_HEADER).decode("utf-8"))
            n = int(header["n_tokens"])
            return tuple(int(t) for t in np.frombuffer(f.read(4 * n), dtype="<i4"))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def open_store(
    model_path: str | os.PathLike[str], directory: str | os.PathLike[str], budget_bytes: int, cache_types: str
) -> PromptStore:
    """The store of ``model_path``'s caches under ``directory`` (its sha256 hashed once and recorded)."""
    root = Path(directory).expanduser()
    key = StoreKey(file_sha256(model_path, root / "models"), llama_build(), cache_types)
    return PromptStore(root, key, budget_bytes)


def llama_build() -> str:
    """llama-cpp-python's version and its libllama file (a rebuild changes the file: a new key)."""
    import importlib.metadata
    import importlib.util

    version = importlib.metadata.version("llama-cpp-python")
    spec = importlib.util.find_spec("llama_cpp")
    stamp = ""
    if spec is not None and spec.origin:
        for lib in sorted((Path(spec.origin).parent / "lib").glob("libllama*")):
            st = lib.stat()
            stamp += f"{lib.name}:{st.st_size}:{st.st_mtime_ns};"
    return f"{version};{stamp}"


def file_sha256(path: str | os.PathLike[str], records: Path) -> str:
    """The sha256 of a model file, recorded under ``records`` by its path, size and mtime so that it
    is hashed once, not at every load."""
    real = Path(path).resolve()
    st = real.stat()
    record = records / (hashlib.sha256(str(real).encode()).hexdigest()[:32] + ".json")
    try:
        data = json.loads(record.read_text())
        if data["size"] == st.st_size and data["mtime_ns"] == st.st_mtime_ns:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with real.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    sha = digest.hexdigest()
    try:
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}))
    except OSError:
        pass
    return sha
