"""Run the edge-qwen CLI with a deterministic kill point (the child process of the crash tests).

    python tests/crashhooks.py POINT [--tiny-registry SHA256 SIZE] [--hf-chunk BYTES] -- ARGS...

POINT (``SIGNAL@WHERE``; SIGNAL is ``KILL`` or ``INT``, the latter is Ctrl-C):

* ``none``                  no kill
* ``KILL@write:N``          once N bytes have been written to an ``*.incomplete`` file
* ``KILL@quantize-log:N``   at the N-th line of llama.cpp's quantizer log (0: the first)
* ``KILL@rename-before:S``  just before a temp file is renamed to a name ending in S
* ``KILL@rename-after:S``   just after that rename
* ``KILL@rename-src-before`` / ``rename-src-after``  the same for any rename *from* ``*.incomplete``
  (huggingface_hub's blobs have no suffix)

``--tiny-registry`` swaps the packaged models.yaml for fakehub's one-model registry.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _die(sig: str) -> None:
    if sig == "INT":
        os.kill(os.getpid(), signal.SIGINT)
        return
    os.kill(os.getpid(), signal.SIGKILL)


class _CountingFile:
    """Delegates to a real file; fires the kill once ``limit`` bytes have been written."""

    def __init__(self, raw: Any, limit: int, sig: str) -> None:
        self._raw, self._limit, self._sig, self._n = raw, limit, sig, 0

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        self._n += len(memoryview(data).cast("B"))
        if self._n >= self._limit:
            self._raw.flush()
            self._limit = 1 << 62
            _die(self._sig)
        return int(n or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def _hook_writes(limit: int, sig: str) -> None:
    real_open = builtins.open

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        raw = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and str(file).endswith(".incomplete") and "w" in mode:
            return _CountingFile(raw, limit, sig)
        return raw

    builtins.open = open_  # type: ignore[assignment]


def _hook_renames(when: str, suffix: str | None, sig: str) -> None:
    def wrap(real: Any) -> Any:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            hit = str(dst).endswith(suffix) if suffix else str(src).endswith(".incomplete")
            if hit and when == "before":
                _die(sig)
            out = real(src, dst, *args, **kwargs)
            if hit and when == "after":
                _die(sig)
            return out

        return rename

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)


def _hook_quantize_log(n: int, sig: str) -> None:
    import edge_qwen.quantize as q

    real = q._log_listener
    seen = [0]

    def listener(echo: bool, progress: Any) -> Any:
        inner = real(echo, progress)

        def on_line(level: int, line: str) -> None:
            if seen[0] == n:
                _die(sig)
            seen[0] += 1
            inner(level, line)

        return on_line

    q._log_listener = listener  # type: ignore[assignment]


def install(point: str) -> None:
    if point == "none":
        return
    sig, _, where = point.partition("@")
    kind, _, arg = where.partition(":")
    if kind == "write":
        _hook_writes(int(arg), sig)
    elif kind == "quantize-log":
        _hook_quantize_log(int(arg), sig)
    elif kind in ("rename-before", "rename-after"):
        _hook_renames(kind.removeprefix("rename-"), arg, sig)
    elif kind in ("rename-src-before", "rename-src-after"):
        _hook_renames(kind.removeprefix("rename-src-"), None, sig)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def _use_tiny_registry(sha256: str, size: int) -> None:
    sys.path.insert(0, str(HERE / "registry"))
    from fakehub import tiny_registry

    import edge_qwen.registry.store as store

    registry = tiny_registry(sha256, size)
    store.load_registry = lambda path=None: registry  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    opts, args = argv[:sep], argv[sep + 1 :]
    install(opts[0])
    if "--hf-chunk" in opts:  # huggingface_hub writes 10 MiB chunks by default: nothing partial to resume
        import huggingface_hub.constants

        huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = int(opts[opts.index("--hf-chunk") + 1])
    if "--tiny-registry" in opts:
        i = opts.index("--tiny-registry")
        _use_tiny_registry(opts[i + 1], int(opts[i + 2]))
    from edge_qwen.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
