"""RPC workers: addresses, the bind rule, and the protocol probe that stands between llama.cpp and a
worker that is down (llama.cpp itself aborts the process there). The probe is checked against a fake
worker speaking ggml's RPC protocol (HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY) and, in
tests/runtime/test_rpc_real.py, against real ``edge-qwen worker`` processes.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from edge_qwen import rpc
from edge_qwen.errors import RpcError, RpcWorkerError


def test_endpoints_are_host_port_pairs_in_order_without_repeats() -> None:
    assert rpc.parse_endpoints("10.0.0.2:50052, pi5.local:50053,10.0.0.2:50052") == (
        "10.0.0.2:50052",
        "pi5.local:50053",
    )
    assert rpc.parse_endpoints(["[::1]:7000"]) == ("[::1]:7000",)
    for bad in ("10.0.0.2", ":50052", "host:0", "host:70000", "host:port"):
        with pytest.raises(RpcError, match="HOST:PORT"):
            rpc.parse_endpoints(bad)
    with pytest.raises(RpcError, match="no RPC worker"):
        rpc.parse_endpoints(" , ")


def test_a_public_bind_needs_allow_remote_and_then_says_the_risk() -> None:
    assert rpc.check_bind("127.0.0.1", allow_remote=False) is None
    assert rpc.check_bind("::1", allow_remote=False) is None
    with pytest.raises(RpcError, match="no authentication.*--allow-remote"):
        rpc.check_bind("0.0.0.0", allow_remote=False)
    warning = rpc.check_bind("192.168.1.20", allow_remote=True)
    assert warning is not None and "WireGuard" in warning and "SSH tunnel" in warning


class FakeWorker:
    """Answers the probe's three commands like ggml's RPC server (protocol ``version``)."""

    def __init__(
        self,
        version: tuple[int, int, int] = (7, 0, 0),
        devices: int = 1,
        silent: bool = False,
        gib: float = 1.0,
    ):
        self.version, self.devices, self.silent, self.gib = version, devices, silent, gib
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.silent:
                    conn.recv(64)
                    threading.Event().wait(2)
                    continue
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        while head := conn.recv(9):
            cmd, size = struct.unpack("<BQ", head)
            payload = conn.recv(size) if size else b""
            if cmd == rpc.CMD_HELLO:
                assert len(payload) == rpc.CONN_CAPS
                reply = bytes([*self.version, 0]) + bytes(rpc.CONN_CAPS)
            elif cmd == rpc.CMD_DEVICE_COUNT:
                reply = struct.pack("<I", self.devices)
            else:
                (index,) = struct.unpack("<I", payload)
                reply = struct.pack("<QQ", int((index + 1) * self.gib * 2**30), 8 * 2**30)
            conn.sendall(struct.pack("<Q", len(reply)) + reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker(devices=2)
    yield w
    w.close()


def test_probe_reads_version_devices_and_free_memory(worker: FakeWorker) -> None:
    status = rpc.probe(worker.endpoint)
    assert status.reachable and status.version == "7.0.0" and status.latency_ms is not None
    assert [(d.index, d.free_bytes) for d in status.devices] == [(0, 2**30), (1, 2 * 2**30)]
    assert status.free_bytes == 3 * 2**30
    assert status.to_dict()["devices"][1]["total_bytes"] == 8 * 2**30


def test_workers_that_are_down_busy_or_incompatible_are_named_with_the_way_out() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    down = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    assert "connection refused: start `edge-qwen worker" in (rpc.probe(down).error or "")
    old = FakeWorker(version=(6, 1, 0))
    busy = FakeWorker(silent=True)
    try:
        status = rpc.probe(old.endpoint)
        assert not status.reachable and "protocol 6.1.0" in (status.error or "")
        assert "busy with another main host" in (rpc.probe(busy.endpoint, timeout=0.5).error or "")
        with pytest.raises(RpcWorkerError, match=rf"{down}: connection refused.*{old.endpoint}: speaks"):
            rpc.require_workers([down, old.endpoint])
    finally:
        old.close()
        busy.close()


@pytest.mark.real
def test_a_worker_that_died_mid_computation_is_named_remembered_and_refused(
    worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the abort guard does once llama.cpp's connection broke: the worker that no longer
    accepts connections is the dead one (the busy one still accepts), every listener hears it, its
    devices are never asked anything again, and a new load is refused with the way out."""
    closed = socket.create_server(("127.0.0.1", 0))
    dead = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    monkeypatch.setattr(rpc, "_ADDED", {worker.endpoint: [101], dead: [202]})
    monkeypatch.setattr(rpc, "_LOST", {})
    monkeypatch.setattr(rpc, "_LOST_DEVICES", set())
    heard: list[tuple[frozenset[str], RpcWorkerError]] = []
    monkeypatch.setattr(rpc, "_LISTENERS", [lambda gone, error: heard.append((gone, error))])
    gone = rpc.declare_lost("/src/ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response")
    assert gone == {dead} and heard[0][0] == {dead}
    message = str(heard[0][1])
    assert f"RPC worker {dead} stopped answering" in message and "ggml-rpc.cpp" not in message
    assert rpc.is_lost_device(202) and not rpc.is_lost_device(101)
    assert rpc.lost_workers() == {dead: "Remote RPC server crashed or returned malformed response"}
    with pytest.raises(RpcWorkerError, match=f"{dead} died during a computation.*restart edge-qwen"):
        rpc.require_workers([worker.endpoint, dead])
    assert rpc.require_workers([worker.endpoint])[0].reachable  # the live one still loads


def test_the_scheduler_charges_only_the_host_share_of_a_model_on_workers(real_gguf) -> None:  # noqa: ANN001
    """With rpc= the layers live on the workers: the budget the scheduler checks is the host's part
    (a Pi main host with a model that only two Pis together hold must not be refused)."""
    from edge_qwen.gguf_header import read_header
    from edge_qwen.scheduler.planning import Entry, Planner
    from edge_qwen.settings import ModelSettings
    from edge_qwen.sizing.estimate import model_shape

    shape = model_shape(read_header(real_gguf))
    planner = Planner(budget=2**30, min_ctx=512, allow_kv_quantization=False, cpu_features=frozenset())
    local = ModelSettings(n_ctx=4096)
    split = ModelSettings(n_ctx=4096, rpc=("127.0.0.1:50052",))
    entry = Entry("m", real_gguf, local, shape)
    host, on_workers = planner.estimate(entry, local), planner.estimate(entry, split)
    assert on_workers.total_bytes < 0.5 * host.total_bytes
    assert on_workers.device_weights_bytes > 0.75 * host.weights_bytes


def test_tensor_split_shares_are_checked() -> None:
    from edge_qwen.errors import ConfigError
    from edge_qwen.settings import parse_tensor_split

    assert parse_tensor_split("1,3") == (1.0, 3.0) and parse_tensor_split([0, 2.5]) == (0.0, 2.5)
    for bad in ("1,x", "0,0", "-1,2", "inf,1", ""):
        with pytest.raises(ConfigError, match="tensor_split"):
            parse_tensor_split(bad)


@pytest.mark.real
def test_a_model_too_big_for_its_workers_is_refused_with_the_numbers_before_anything_is_sent(
    real_gguf,
) -> None:  # noqa: ANN001
    """Two workers with 150 MiB free each cannot hold the 0.5B's ~370 MiB of layers: refused from
    the probe's numbers, before llama.cpp connects (nothing registered)."""
    from edge_qwen.errors import BudgetExceededError
    from edge_qwen.runtime import Model

    small = [FakeWorker(gib=150 / 1024), FakeWorker(gib=150 / 1024)]
    try:
        endpoints = [w.endpoint for w in small]
        with pytest.raises(BudgetExceededError, match=rf"RPC worker {endpoints[0]}.*150 MiB.*--tensor-split"):
            Model.load(real_gguf, rpc=endpoints, n_ctx=512)
        assert not rpc.registered()
    finally:
        for w in small:
            w.close()


def test_the_server_answers_a_worker_that_is_down_with_503_naming_it() -> None:
    from edge_qwen.server.http_errors import api_error

    err = api_error(RpcWorkerError("RPC worker unavailable: 10.0.0.2:50052: connection refused"))
    assert (err.status, err.code) == (503, "rpc_worker_unavailable") and "10.0.0.2:50052" in err.message
    assert err.headers == {"Retry-After": "1"}


@pytest.mark.real
def test_a_model_whose_worker_is_down_is_unavailable_in_the_snapshot_while_others_serve(real_gguf) -> None:  # noqa: ANN001
    """What /health shows: the failed model with its reason, the other model answering."""
    from edge_qwen.scheduler import Scheduler

    closed = socket.create_server(("127.0.0.1", 0))
    down = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    with Scheduler(budget="2GiB") as s:
        s.add("split", real_gguf, n_ctx=512, rpc=[down])
        s.add("local", real_gguf, n_ctx=512)
        with pytest.raises(RpcWorkerError, match=down):
            s.generate("split", "def add(x, y):", max_tokens=2)
        assert s.generate("local", "def add(x, y):", max_tokens=2).usage.completion_tokens == 2
        status = {m.name: m.to_dict() for m in s.snapshot().models}
    assert status["split"]["available"] is False and down in status["split"]["load_error"]
    assert status["local"]["available"] is True and status["local"]["load_error"] is None
