"""Images through the HTTP API on a tiny random Qwen2-VL pair: the real ``openai`` client sends a
``data:`` URL and gets an answer; bad media is an OpenAI-style 400/413 naming ``messages``; local
paths and (without ``--allow-remote-media``) http URLs are refused; and the remote fetcher's SSRF
guard never contacts a loopback HTTP server unless a test overrides the guard for that one call."""

from __future__ import annotations

import base64
import io
import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serverutil import MODEL, running_server

from edge_qwen.errors import MediaDecodeError, MediaTooLargeError, RemoteMediaError
from edge_qwen.runtime import Model
from edge_qwen.runtime.media import media_fetch
from edge_qwen.runtime.media.content import SERVER_POLICY, MediaLimits, MediaPolicy
from edge_qwen.runtime.media.media_fetch import RemoteFetcher
from edge_qwen.server import ServerConfig, StaticProvider
from edge_qwen.server.security import redacted_messages as _redacted_messages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_multimodal import make_multimodal_checkpoint, random_image  # noqa: E402

from edge_qwen.convert import convert  # noqa: E402

LIMITS = MediaLimits(max_pixels=200 * 200)  # a 168x112 image fits, 256x256 does not


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(url: str, text: str = "What is in this picture?") -> dict[str, object]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 4,
        "temperature": 0,
    }


# --- a loopback HTTP server that counts every request it gets -------------------------------------


class _Images(BaseHTTPRequestHandler):
    hits: list[str] = []
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path != "/no-length":
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """``http://127.0.0.1:PORT``, serving one PNG; ``_Images.hits`` lists the paths it was asked for."""
    _Images.body = png(random_image(168, 112, seed=4))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def hits() -> list[str]:
    _Images.hits.clear()
    return _Images.hits


# --- the SSRF guard, without a model ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/a.png", "http://10.1.2.3/a.png", "http://169.254.169.254/latest/meta-data",
     "http://[::1]:{port}/a.png", "http://[::ffff:127.0.0.1]:{port}/a.png", "http://0.0.0.0:{port}/a.png",
     "https://192.168.0.10/a.png", "http://100.64.0.1/a.png"],
)  # fmt: skip
def test_the_guard_refuses_non_public_addresses(url: str, image_host: str, hits: list[str]) -> None:
    port = image_host.rsplit(":", 1)[1]
    with pytest.raises(RemoteMediaError, match="non-public address"):
        RemoteFetcher(timeout=2)(url.format(port=port), 1 << 20)
    assert hits == []  # refused before connecting


def test_a_hostname_resolving_to_loopback_is_refused(
    image_host: str, hits: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_fetch, "resolve_host", lambda host, port: ["93.184.215.14", "127.0.0.1"])
    port = image_host.rsplit(":", 1)[1]
    with pytest.raises(RemoteMediaError, match="'images.example.com' resolves to 127.0.0.1"):
        RemoteFetcher()(f"http://images.example.com:{port}/a.png", 1 << 20)
    assert hits == []


def test_overriding_the_guard_for_one_call_reaches_the_checked_address(
    image_host: str, hits: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the name resolves once, to the loopback server; the connection goes to that address
    monkeypatch.setattr(media_fetch, "resolve_host", lambda host, port: ["127.0.0.1"])
    port = image_host.rsplit(":", 1)[1]
    loopback_ok = RemoteFetcher(allow=lambda ip: ip == ipaddress.ip_address("127.0.0.1"))
    assert loopback_ok(f"http://images.example.com:{port}/a.png", 1 << 20) == _Images.body
    assert hits == ["/a.png"]
    with pytest.raises(RemoteMediaError, match="169.254.169.254"):  # a redirect is checked again
        loopback_ok(f"{image_host}/redirect", 1 << 20)
    assert hits == ["/a.png", "/redirect"]


def test_the_fetcher_caps_bytes_and_time(image_host: str) -> None:
    fetch = RemoteFetcher(timeout=0.5, allow=lambda ip: ip.is_loopback)
    size = len(_Images.body)
    with pytest.raises(MediaTooLargeError):  # refused from Content-Length
        fetch(f"{image_host}/a.png", size - 1)
    with pytest.raises(MediaTooLargeError):  # no length declared: stopped while reading
        fetch(f"{image_host}/no-length", size - 1)
    assert fetch(f"{image_host}/no-length", size) == _Images.body
    with pytest.raises(MediaDecodeError, match="timed out"):
        fetch(f"{image_host}/slow", size)


def test_logged_prompts_redact_inline_media() -> None:
    url = data_url(b"\x89PNG" * 100)
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg" * 100, "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, audio]}]
    shown = str(_redacted_messages(messages))
    assert "UklGRg" not in shown and base64.b64encode(b"\x89PNG").decode() not in shown
    assert "data:image/png;base64,<redacted" in shown and "'format': 'wav'" in shown


def test_serve_pairs_projectors_and_chooses_the_media_policy(tmp_path: Path) -> None:
    from edge_qwen.commands.serve import media_policy, parse_mmprojs
    from edge_qwen.errors import ConfigError

    proj = tmp_path / "mmproj-x.gguf"
    proj.write_bytes(b"GGUF")
    one, two = {"vl": tmp_path / "a.gguf"}, {"vl": tmp_path / "a.gguf", "b": tmp_path / "b.gguf"}
    assert parse_mmprojs([str(proj)], one) == {"vl": str(proj)}
    assert parse_mmprojs([f"b={proj}"], two) == {"b": str(proj)}
    for bad in ([str(proj)], [f"c={proj}"], [f"vl={tmp_path / 'missing.gguf'}"]):
        with pytest.raises(ConfigError):
            parse_mmprojs(bad, two)
    assert media_policy(False) is SERVER_POLICY and SERVER_POLICY.fetch is None
    assert isinstance(media_policy(True).fetch, RemoteFetcher) and not media_policy(True).allow_local_files


# --- through the server, on the tiny Qwen2-VL ---------------------------------------------------------


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Iterator[Model]:
    root = tmp_path_factory.mktemp("served-vl")
    ck = make_multimodal_checkpoint(
        root / "ck", arch="qwen2vl", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir
    )
    out = convert(ck, root / "out", outtype="f32", evaluate=False, quiet=True).as_dict()
    with Model.load(out["gguf"], mmproj=out["mmproj"]["path"], n_ctx=2048, parallel=2, n_threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def served(vl_model: Model) -> Iterator[str]:
    config = ServerConfig(media_policy=MediaPolicy(limits=LIMITS))
    with running_server(StaticProvider({MODEL: vl_model}), config) as url:
        yield url


def post(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


@pytest.mark.real
@pytest.mark.slow
def test_the_openai_client_sends_an_image(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    body = ask(data_url(png(random_image(168, 112))))
    answer = client.chat.completions.create(**body)  # type: ignore[call-overload]
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is in this picture?"}], max_tokens=4
    )
    assert answer.choices[0].message.content and answer.usage is not None and plain.usage is not None
    # 168x112 pixels: 6x4 merged patches = 24 image tokens, plus <|vision_start|> and <|vision_end|>
    assert answer.usage.prompt_tokens == plain.usage.prompt_tokens + 26


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "status", "code", "match"),
    [
        (data_url(png(random_image(256, 256))), 413, "media_too_large", "pixel count"),
        (data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), 400, "invalid_media", ""),
        ("/etc/hosts", 400, "invalid_media", "local files"),
        ("file:///etc/hosts", 400, "invalid_media", "local files"),
        ("http://93.184.215.14/a.png", 400, "invalid_media", "--allow-remote-media"),
    ],
)
def test_refused_media_is_an_openai_error(served: str, url: str, status: int, code: str, match: str) -> None:
    response = post(served, ask(url))
    error = response.json()["error"]
    assert response.status_code == status
    assert (error["code"], error["param"], error["type"]) == (code, "messages", "invalid_request_error")
    assert match in error["message"]
    assert post(served, ask(data_url(png(random_image(56, 56))))).status_code == 200  # still serving


@pytest.mark.real
@pytest.mark.slow
def test_remote_media_is_fetched_only_through_the_guard(
    vl_model: Model, image_host: str, hits: list[str]
) -> None:
    guarded = ServerConfig(media_policy=MediaPolicy(fetch=RemoteFetcher(timeout=5)))
    with running_server(StaticProvider({MODEL: vl_model}), guarded) as url:
        response = post(url, ask(f"{image_host}/a.png"))
        assert response.status_code == 400 and "non-public" in response.json()["error"]["message"]
        assert hits == []
    trusting = ServerConfig(media_policy=MediaPolicy(fetch=RemoteFetcher(allow=lambda ip: ip.is_loopback)))
    with running_server(StaticProvider({MODEL: vl_model}), trusting) as url:
        fetched = post(url, ask(f"{image_host}/a.png")).json()
        inline = post(url, ask(data_url(_Images.body))).json()
    assert hits == ["/a.png"]
    assert fetched["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
    assert fetched["usage"]["prompt_tokens"] == inline["usage"]["prompt_tokens"]
