"""llama.cpp's RPC backend: other machines' devices as devices of this one.

A worker (``edge-qwen worker``) serves its devices with ggml's own RPC server
(``ggml_backend_rpc_start_server``); a main host adds workers with ``ggml_backend_rpc_add_server``
and registers them, after which llama.cpp splits layers across the local and remote devices like
GPUs. llama-cpp-python binds none of this, so the ``ggml_backend_rpc_*`` functions are declared here
with ctypes against the ``libggml-rpc`` it ships (built with ``-DGGML_RPC=on``, as scripts/setup.sh
does for every backend).

llama.cpp aborts the whole process when a worker it connects to is down or speaks another protocol
(``GGML_ABORT("Failed to connect …")``). So every worker is first probed here, over the protocol
itself in plain Python (:func:`probe`: ``HELLO`` with the version, ``DEVICE_COUNT``,
``GET_DEVICE_MEMORY``, with a timeout), and only reachable, compatible workers are handed to
llama.cpp; the probe also gives ``doctor --rpc`` and ``plan`` each worker's free memory. The
protocol has no authentication: anyone who reaches the port can run computations and read or write
the worker's buffers, hence loopback by default (:func:`check_bind`).

A worker that dies in the middle of a computation makes llama.cpp's connection thread abort the
process too. Once a worker is added, a ggml abort callback (:func:`_on_abort`) catches exactly
those aborts: it parks the connection thread for good (returning would abort), finds which workers
are gone and tells the listeners (:func:`on_worker_lost`; the compute thread fails that model's
requests and carries on with the others). llama.cpp keeps the broken connection cached, so a lost
worker is refused for the rest of the process, with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RpcError, RpcWorkerError

DEFAULT_PORT = 50052
# ggml-rpc.h / ggml-rpc.cpp (protocol 7.x): the commands the probe sends and their payloads
PROTO_MAJOR = 7
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE: zeros ask for plain TCP
REMOTE_RISK = (
    "the RPC protocol has no authentication or encryption: anyone who can reach this port can run "
    "computations on this machine and read or overwrite its model buffers. Serve only on a private "
    "link (a WireGuard tunnel, or an SSH tunnel: ssh -L 50052:127.0.0.1:50052 worker) or a trusted LAN"
)


@dataclass(frozen=True)
class WorkerDevice:
    index: int
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker answered (or why it did not)."""

    endpoint: str
    reachable: bool
    version: str | None = None
    devices: tuple[WorkerDevice, ...] = ()
    latency_ms: float | None = None  # one HELLO round trip
    error: str | None = None

    @property
    def free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "reachable": self.reachable,
            "version": self.version,
            "devices": [d.__dict__ for d in self.devices],
            "free_bytes": self.free_bytes,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


# --- addresses --------------------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port).

    Raises:
        RpcError: not HOST:PORT, or the port is out of range.
    """
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RpcError(f"RPC worker {text!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT})")
    return host, int(port_text)


def parse_endpoints(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"a:1,b:2"`` or a list -> normalized ``HOST:PORT`` strings, in order, without repeats."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        host, port = parse_endpoint(part)
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if name not in out:
            out.append(name)
    if not out:
        raise RpcError("no RPC worker given; pass HOST:PORT[,HOST:PORT…]")
    return tuple(out)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """A warning to print for a non-loopback bind that was allowed; refused otherwise.

    Raises:
        RpcError: a non-loopback address without ``allow_remote``.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise RpcError(
            f"refusing to serve on {host}: {REMOTE_RISK}. Pass --allow-remote to serve there anyway"
        )
    return f"warning: serving on {host}, reachable from other machines; {REMOTE_RISK}"


# --- the probe ----------------------------------------------------------------------------------


def probe(endpoint: str, timeout: float = 3.0) -> WorkerStatus:
    """Ask a worker its protocol version, devices and their free memory, over its own protocol."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            started = time.perf_counter()
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
            latency = (time.perf_counter() - started) * 1000
            major, minor, patch = hello[0], hello[1], hello[2]
            version = f"{major}.{minor}.{patch}"
            if major != PROTO_MAJOR:
                return WorkerStatus(
                    endpoint, False, version, (), latency,
                    f"speaks RPC protocol {version}, this build {PROTO_MAJOR}.x: install the same "
                    "edge-qwen (llama-cpp-python) version on both machines",
                )  # fmt: skip
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for i in range(count):
                free, total = struct.unpack(
                    "<QQ", _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16)
                )
                devices.append(WorkerDevice(i, free, total))
            return WorkerStatus(endpoint, True, version, tuple(devices), round(latency, 2))
    except TimeoutError:
        return WorkerStatus(
            endpoint, False,
            error=f"no answer within {timeout:g} s: the worker is busy with another main host (it "
            "serves one at a time) or something else listens there",
        )  # fmt: skip
    except ConnectionRefusedError:
        return WorkerStatus(
            endpoint, False, error=f"connection refused: start `edge-qwen worker --port {port}` on {host}"
        )
    except OSError as exc:
        return WorkerStatus(endpoint, False, error=f"cannot reach it: {exc.strerror or exc}")


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv(sock, 8))
    if size != reply_size:
        raise OSError(f"unexpected reply size {size} to command {cmd}")
    return _recv(sock, size)


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("the worker closed the connection")
        data += chunk
    return data


def require_workers(endpoints: Iterable[str], timeout: float = 3.0) -> list[WorkerStatus]:
    """Every worker's status; all must be reachable and compatible.

    Raises:
        RpcWorkerError: naming each worker that is not, and why.
    """
    endpoints = list(endpoints)
    gone = [e for e in endpoints if e in _LOST]
    if gone:
        raise RpcWorkerError(
            f"RPC worker {', '.join(gone)} died during a computation earlier in this process "
            f"({_LOST[gone[0]]}); llama.cpp keeps that broken connection, so restart edge-qwen to use "
            "the worker again"
        )
    statuses = [probe(e, timeout) for e in endpoints]
    bad = [s for s in statuses if not s.reachable or not s.devices]
    if bad:
        detail = "; ".join(f"{s.endpoint}: {s.error or 'serves no device'}" for s in bad)
        raise RpcWorkerError(f"RPC worker unavailable: {detail}")
    return statuses


# --- llama.cpp's side (ctypes seam) --------------------------------------------------------------

_c = ctypes.c_void_p


@functools.lru_cache(maxsize=1)
def _librpc() -> Any:
    """libggml-rpc as llama-cpp-python ships it, with the functions used here declared."""
    import llama_cpp.llama_cpp as L

    from . import _llama

    _llama.init_backend()
    if not L.llama_supports_rpc():
        raise RpcError(
            "this llama.cpp build has no RPC backend; rebuild it with scripts/setup.sh (which adds "
            "-DGGML_RPC=on), or CMAKE_ARGS=-DGGML_RPC=on pip install --force-reinstall llama-cpp-python"
        )
    base = Path(str(getattr(L, "_base_path", "")))
    found = sorted(base.glob("libggml-rpc.*")) or sorted(base.parent.glob("**/libggml-rpc.*"))
    if not found:
        raise RpcError(f"llama.cpp reports RPC support but no libggml-rpc library is in {base}")
    lib = ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_backend_rpc_add_server.argtypes, lib.ggml_backend_rpc_add_server.restype = [ctypes.c_char_p], _c
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(_c),
    ]  # fmt: skip
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


@functools.lru_cache(maxsize=1)
def _libggml() -> Any:
    """libggml as llama-cpp-python loaded it (the backend registry), for the calls made here."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_backend_register.argtypes, lib.ggml_backend_register.restype = [_c], None
    lib.ggml_backend_reg_dev_count.argtypes, lib.ggml_backend_reg_dev_count.restype = [_c], ctypes.c_size_t
    lib.ggml_backend_reg_dev_get.argtypes, lib.ggml_backend_reg_dev_get.restype = [_c, ctypes.c_size_t], _c
    lib.ggml_backend_dev_by_type.argtypes, lib.ggml_backend_dev_by_type.restype = [ctypes.c_int], _c
    return lib


_ADDED: dict[str, list[int]] = {}  # endpoint -> its ggml devices (ggml_backend_dev_t), once registered


def registered() -> bool:
    """Whether this process has registered any worker (its devices are then GPU-like devices of
    every later load unless a load lists its own: see :func:`worker_devices`)."""
    return bool(_ADDED)


def worker_devices(endpoints: Iterable[str]) -> list[int]:
    """The ggml devices of these (registered) workers, in order."""
    return [dev for e in endpoints for dev in _ADDED.get(e, [])]


def add_workers(
    endpoints: Iterable[str], timeout: float = 3.0, *, probed: list[WorkerStatus] | None = None
) -> list[WorkerStatus]:
    """Probe (unless ``probed`` holds :func:`require_workers`' answer for them), then register every
    worker's devices with llama.cpp (once per process); a model loaded afterwards with layers on
    GPU-like devices spreads them over these.

    Raises:
        RpcWorkerError: a worker is down or incompatible (nothing is registered then).
        RpcError: the build has no RPC backend.
    """
    statuses = probed if probed is not None else require_workers(endpoints, timeout)
    rpc, ggml = _librpc(), _libggml()
    for status in statuses:
        if status.endpoint in _ADDED:
            continue
        reg = rpc.ggml_backend_rpc_add_server(status.endpoint.encode())
        if not reg:
            raise RpcWorkerError(f"RPC worker {status.endpoint} reported no device to llama.cpp")
        ggml.ggml_backend_register(reg)
        count = ggml.ggml_backend_reg_dev_count(reg)
        _ADDED[status.endpoint] = [ggml.ggml_backend_reg_dev_get(reg, i) for i in range(count)]
    _guard_aborts()
    return statuses


# --- a worker that dies mid-computation ----------------------------------------------------------

_LOST: dict[str, str] = {}  # endpoint -> what llama.cpp said when it died
_LOST_DEVICES: set[int] = set()  # their ggml devices: asking them anything would wait for ever
_LISTENERS: list[Callable[[frozenset[str], RpcWorkerError], None]] = []
_ABORT_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_GUARD: list[Any] = []  # the installed callback (kept alive for as long as llama.cpp may call it)


def on_worker_lost(listener: Callable[[frozenset[str], RpcWorkerError], None]) -> None:
    """Call ``listener(endpoints, error)`` from a helper thread when workers die mid-computation."""
    _LISTENERS.append(listener)


def lost_workers() -> dict[str, str]:
    """The workers that died during a computation in this process, and what llama.cpp said."""
    return dict(_LOST)


def is_lost_device(device: int) -> bool:
    """Whether a ggml device belongs to a worker that died (never query it: nothing answers)."""
    return device in _LOST_DEVICES


def _guard_aborts() -> None:
    if _GUARD:
        return
    lib = _libggml()
    lib.ggml_set_abort_callback.argtypes, lib.ggml_set_abort_callback.restype = [_ABORT_PROTO], _c
    _GUARD.append(_ABORT_PROTO(_on_abort))
    lib.ggml_set_abort_callback(_GUARD[0])


def _on_abort(message: bytes | None) -> None:
    """ggml's abort callback, on the aborting thread; abort() follows if this returns."""
    text = (message or b"").decode(errors="replace")
    if "ggml-rpc" not in text:
        sys.stderr.write(text + "\n")  # what ggml prints without a callback; the process aborts
        sys.stderr.flush()
        return
    threading.Thread(target=declare_lost, args=(text,), name="edge-qwen-rpc-lost", daemon=True).start()
    threading.Event().wait()  # this llama.cpp thread never comes back; the process lives on


def declare_lost(reason: str, timeout: float = 2.0) -> frozenset[str]:
    """Find which added workers are gone (nothing accepts a connection there; if every one still
    does, all of them are suspect), remember them and tell the listeners. Returns them."""
    reason = reason.split(": ", 1)[-1].strip()  # llama.cpp's message without its source location
    suspects = [e for e in _ADDED if e not in _LOST]
    gone = frozenset(e for e in suspects if not _accepts(e, timeout)) or frozenset(suspects)
    for endpoint in gone:
        _LOST[endpoint] = reason
        _LOST_DEVICES.update(_ADDED.get(endpoint, []))
    error = RpcWorkerError(
        f"RPC worker {', '.join(sorted(gone))} stopped answering during a computation (llama.cpp: "
        f"{reason}); the models using it are unavailable until edge-qwen restarts, the others keep "
        "serving"
    )
    for listener in list(_LISTENERS):
        listener(gone, error)
    return gone


def _accepts(endpoint: str, timeout: float) -> bool:
    """Whether something accepts a TCP connection there (a busy worker accepts but will not answer
    until its current main host leaves, so only the connection is tried)."""
    try:
        with socket.create_connection(parse_endpoint(endpoint), timeout=timeout):
            return True
    except OSError:
        return False


def serve(endpoint: str, *, threads: int, cache_dir: str | None = None) -> None:
    """Serve this machine's CPU through ggml's RPC server; blocks for as long as it serves (a
    failed bind returns at once, with ggml's message on stderr)."""
    rpc, ggml = _librpc(), _libggml()
    cpu = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not cpu:
        raise RpcError("llama.cpp reports no CPU device to serve")
    devices = (_c * 1)(cpu)
    rpc.ggml_backend_rpc_start_server(
        endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices
    )
