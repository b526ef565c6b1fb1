"""``edge-qwen serve``: option parsing, SIGTERM letting a running stream finish before exiting, and
Ctrl-C ending it with status 130 and a one-line message (no traceback)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serverutil import free_port

from edge_qwen.commands.serve import is_loopback, parse_models, parse_rate
from edge_qwen.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def default_sigint() -> None:
    """Run in the child before exec: SIGINT as a terminal delivers it, even when this test run was
    started as a background job (which inherits an ignored SIGINT, and Python keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("text", "per_min", "burst"), [("60", 60, 60), ("60/min", 60, 60), ("2/s", 120, 2), ("120/hour", 2, 120)]
)
def test_rates_read_as_requests_per_minute_with_a_burst_of_n(text: str, per_min: float, burst: int) -> None:
    """``2/s`` lets two quick requests through, not 120: the bucket holds N of ``N/unit``."""
    assert parse_rate(text) == (per_min, burst)


@pytest.mark.parametrize("text", ["fast", "0/min", "5/fortnight"])
def test_bad_rates_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError, match="60/min"):
        parse_rate(text)


def test_models_are_named_after_their_files_or_explicitly(real_gguf: Path) -> None:
    assert parse_models([str(real_gguf)]) == {"qwen2.5-coder-0.5b-instruct-q4_k_m": real_gguf}
    assert parse_models([f"a={real_gguf},b={real_gguf}"]) == {"a": real_gguf, "b": real_gguf}
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_models([str(real_gguf), str(real_gguf)])
    with pytest.raises(ConfigError, match="neither a .gguf file"):
        parse_models(["x=/nonexistent/model.gguf"])


def test_a_port_in_use_is_one_line_and_json_under_json(real_gguf: Path) -> None:
    """Not uvicorn's log and exit: the bind happens first, and its failure is an edge-qwen error."""
    import socket

    from edge_qwen.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        argv = ["serve", "--models", str(real_gguf), "--port", port, "--no-preload"]
        assert main(argv) == 2
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*argv, "--json"]) == 2
    error = json.loads(out.getvalue())["error"]
    assert error["type"] == "ServerBindError" and f"127.0.0.1:{port}" in error["message"]
    assert "pick another --port" in error["message"]


def test_only_loopback_addresses_count_as_local() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


@pytest.mark.real
@pytest.mark.slow
def test_sigterm_drains_the_running_stream_then_exits(real_gguf: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "edge_qwen.cli", "serve", "--models", f"qwen={real_gguf}", "--ctx", "512"]
    cmd += ["--threads", "1", "--port", str(port), "--drain-timeout", "120", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        body = {
            "model": "qwen",
            "messages": [{"role": "user", "content": "Write a long story about a robot."}],
            "max_tokens": 24,
            "temperature": 0,
            "stream": True,
        }
        events = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    if len(events) == 2:
                        proc.send_signal(signal.SIGTERM)  # mid-stream
                        break
            rest = list(lines)
        events += [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
        finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]]
        assert finish == ["length"]  # the whole answer, not cut off by the shutdown
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.real
@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_130_and_no_traceback(real_gguf: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "edge_qwen.cli", "serve", "--models", f"qwen={real_gguf}", "--ctx", "512"]
    cmd += ["--threads", "1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()[-2000:]
        assert "Traceback" not in err.decode() and "interrupted" in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parallel_and_context_defaults_follow_the_machine() -> None:
    from edge_qwen.commands.serve import serve_shape
    from edge_qwen.sizing.device import SystemMemory, default_parallel

    gib = 2**30
    assert default_parallel(2, SystemMemory(24 * gib, 20 * gib, "meminfo")) == 4
    assert default_parallel(16, SystemMemory(32 * gib, 30 * gib, "meminfo")) == 8
    assert default_parallel(4, SystemMemory(gib, gib // 2, "meminfo")) == 2
    assert serve_shape(8, None) == (8, 8192)
    assert serve_shape(2, None) == (2, 4096)
    assert serve_shape(4, 2048) == (4, 2048)
    with pytest.raises(ConfigError, match="at least one sequence slot"):
        serve_shape(0, None)


def test_lora_options_route_base_colon_name(tmp_path: Path) -> None:
    from edge_qwen.commands.serve import parse_loras

    models = {"coder": tmp_path / "coder.gguf"}
    files, routes = parse_loras(["sql=/a/sql.gguf", "coder:tone=/a/tone.gguf:0.5"], models)
    assert files == {"coder": {"sql": "/a/sql.gguf", "tone": "/a/tone.gguf"}}
    assert routes == {"coder:sql": ("coder", {"sql": 1.0}), "coder:tone": ("coder", {"tone": 0.5})}
    with pytest.raises(ConfigError, match="BASE:NAME=FILE"):
        parse_loras(["other:x=/a.gguf"], models)
    with pytest.raises(ConfigError, match="NAME=FILE"):
        parse_loras(["/just/a/file.gguf"], models)


def test_draft_options_pair_a_draft_with_its_model(real_gguf: Path, tmp_path: Path) -> None:
    from edge_qwen.commands.serve import parse_drafts

    one = {"coder": real_gguf}
    assert parse_drafts([str(real_gguf)], one) == {"coder": str(real_gguf)}
    two = {"coder": real_gguf, "other": real_gguf}
    assert parse_drafts([f"other={real_gguf}"], two) == {"other": str(real_gguf)}
    with pytest.raises(ConfigError, match="MODEL=FILE"):
        parse_drafts([str(real_gguf)], two)  # which model? say it
    with pytest.raises(ConfigError, match="neither a .gguf file"):
        parse_drafts([str(tmp_path / "missing.gguf")], one)


@pytest.mark.real
@pytest.mark.slow
def test_a_restarted_server_restores_a_conversation_from_its_prompt_cache_dir(
    real_gguf: Path, tmp_path: Path
) -> None:
    """``serve --prompt-cache-dir``: stop the server after a conversation, start it again, and the
    next turn of that conversation is restored (cached_tokens), not prefilled."""
    openai = pytest.importorskip("openai")
    system = {"role": "system", "content": "You answer questions about a notes app, briefly. " * 12}
    question = {"role": "user", "content": "How do I pin a note?"}

    def serving() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        cmd = [sys.executable, "-m", "edge_qwen.cli", "serve", "--models", f"qwen={real_gguf}"]
        cmd += ["--ctx", "2048", "--parallel", "1", "--threads", "2", "--port", str(port)]
        cmd += ["--log-level", "warning", "--prompt-cache-dir", str(tmp_path)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return proc, url
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    proc, url = serving()
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        first = client.chat.completions.create(
            model="qwen", messages=[system, question], max_tokens=16, temperature=0
        )
    finally:
        stop(proc)
    turn = [system, question, {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And how do I unpin it?"}]  # fmt: skip
    proc, url = serving()
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        again = client.chat.completions.create(model="qwen", messages=turn, max_tokens=8, temperature=0)
    finally:
        stop(proc)
    assert again.usage.prompt_tokens_details.cached_tokens >= 0.9 * first.usage.prompt_tokens
