"""A local stand-in for the Hugging Face hub (its resolve URL layout, on 127.0.0.1) and a registry
pointing at it, so the real huggingface_hub client is exercised without the network."""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import pytest

from edge_qwen.registry.catalog import Registry, parse_registry

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "edge-qwen-test/Tiny-GGUF"
FILENAME = "tiny-q4_k_m.gguf"


def tiny_gguf_bytes(size: int = 3 * 2**20) -> bytes:
    """A valid GGUF of exactly ``size`` bytes (a multiple of 32): one I8 tensor of deterministic
    filler, enough for the header check and big enough to stream."""
    key, arch = b"general.architecture", b"fakearch"  # not a Qwen arch: no model checks
    header = gguf.GGUF_MAGIC.to_bytes(4, "little") + struct.pack("<IQQ", 3, 1, 1)
    header += struct.pack("<Q", len(key)) + key
    header += struct.pack("<IQ", gguf.GGUFValueType.STRING, len(arch)) + arch
    name = b"filler"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I", 1)
    data_offset = -(-(len(header) + len(info) + 8 + 4 + 8) // 32) * 32
    n = size - data_offset
    info += struct.pack("<QIQ", n, gguf.GGMLQuantizationType.I8, 0)
    head = header + info
    filler = hashlib.sha256(b"edge-qwen").digest() * (n // 32 + 1)
    return head + b"\0" * (data_offset - len(head)) + filler[:n]


@dataclass
class FakeHub:
    """Serves ``/{repo}/resolve/{revision}/{filename}`` like huggingface.co: HEAD metadata, GET + Range."""

    files: dict[str, bytes]
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    cut_first_get_at: int | None = None  # drop the connection after this many bytes, once
    stall_first_get_at: int | None = None  # send this many bytes, then hang until ``release`` (once)
    stalled: threading.Event = field(default_factory=threading.Event)  # set once the stall began
    release: threading.Event = field(default_factory=threading.Event)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _lookup(self) -> bytes | None:
            prefix = f"/{REPO}/resolve/"
            if not self.path.startswith(prefix):
                return None
            _, _, name = self.path[len(prefix) :].partition("/")
            return hub.files.get(name.split("?")[0])

        def _headers(self, data: bytes, status: int, length: int, start: int = 0) -> None:
            self.send_response(status)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802
            hub.requests.append(("HEAD", self.path, None))
            data = self._lookup()
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._headers(data, 200, len(data))

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            hub.requests.append(("GET", self.path, rng))
            data = self._lookup()
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = data[start:]
            self._headers(data, 206 if rng else 200, len(body), start)
            if hub.stall_first_get_at is not None:
                stall, hub.stall_first_get_at = hub.stall_first_get_at, None
                self.wfile.write(body[:stall])
                self.wfile.flush()
                hub.stalled.set()
                hub.release.wait(60)
                self.close_connection = True
                return
            if hub.cut_first_get_at is not None:
                cut, hub.cut_first_get_at = hub.cut_first_get_at, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """An online hub on 127.0.0.1 (HF_ENDPOINT), a fresh HF_HOME and edge-qwen cache."""
    import huggingface_hub.constants

    hub = FakeHub(files={FILENAME: tiny_gguf_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import time
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path / "edge-qwen"))
    monkeypatch.delenv("EDGE_QWEN_OFFLINE", raising=False)
    try:
        yield hub
    finally:
        hub.release.set()
        server.shutdown()
        server.server_close()


def tiny_registry(sha256: str | None, size: int | None) -> Registry:
    """A one-model registry whose q4_k_m lives in the fake hub's repo."""
    return parse_registry(
        {
            "schema": 1,
            "models": {
                "tiny": {
                    "family": "qwen3",
                    "architecture": "Qwen3ForCausalLM",
                    "gguf_arch": "qwen3",
                    "params_total": 1_000_000,
                    "native_context": 4096,
                    "max_context": None,
                    "license": "apache-2.0",
                    "tasks": ["chat"],
                    "thinking": True,
                    "sampling": {"thinking": "qwen3-thinking"},
                    "hf_checkpoint": "edge-qwen-test/Tiny",
                    "arch": {
                        "layers": 2,
                        "hidden": 64,
                        "heads": 4,
                        "kv_heads": 2,
                        "head_dim": 16,
                        "vocab": 1000,
                    },
                    "gguf": {
                        "q4_k_m": {
                            "repo": REPO,
                            "files": [{"name": FILENAME, "size": size, "sha256": sha256}],
                        }
                    },
                }
            },
        }
    )


@pytest.fixture
def tiny_bytes(fake_hub: FakeHub) -> bytes:
    return fake_hub.files[FILENAME]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
