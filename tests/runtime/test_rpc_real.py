"""Two ``edge-qwen worker`` processes on loopback and the real Qwen2.5-Coder-0.5B split across them:
the greedy answer is the local one token for token, the main process keeps only the token
embeddings (llama.cpp's own buffer report), and every failure is a clear error, not llama.cpp's
abort. The main side runs in a subprocess (tests/rpc_main.py): registering workers changes a
process's device list for good.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_qwen import rpc

pytestmark = [pytest.mark.real, pytest.mark.slow]
MAIN = Path(__file__).resolve().parents[1] / "rpc_main.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(port: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "edge_qwen.cli", "worker", "--port", str(port), "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None or rpc.probe(f"127.0.0.1:{port}", timeout=1).reachable:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"worker on port {port} did not come up")


@pytest.fixture(scope="module")
def workers() -> Iterator[list[str]]:
    ports = [free_port(), free_port()]
    procs = [start_worker(p) for p in ports]
    yield [f"127.0.0.1:{p}" for p in ports]
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


def answer(
    model: Path, endpoints: list[str] | None = None, split: str | None = None, adapter: Path | None = None
) -> dict:
    cmd = [sys.executable, str(MAIN), str(model)] + ([",".join(endpoints)] if endpoints else [])
    cmd += [split] if split else []
    cmd += ["--adapter", str(adapter)] if adapter else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_model_split_across_two_workers_answers_like_the_local_run(
    real_gguf: Path, workers: list[str]
) -> None:
    local = answer(real_gguf)
    split = answer(real_gguf, workers)
    assert split["tokens"] == local["tokens"] and len(local["tokens"]) == 24
    # speculation and continuous batching on the split model give the same answer
    assert split["lookup"] == split["batched"][0] == split["batched"][1] == local["tokens"]
    # llama.cpp's buffer report: the main host keeps the token embeddings, each worker a share
    remote = {k: v for k, v in split["buffers"].items() if k.startswith("RPC")}
    assert {k.split("[")[1].rstrip("]") for k in remote} == set(workers) and all(
        v > 50 for v in remote.values()
    )
    assert split["buffers"]["CPU_Mapped"] < 0.3 * local["buffers"]["CPU_Mapped"]
    total = split["buffers"]["CPU_Mapped"] + sum(remote.values())
    assert abs(total - local["buffers"]["CPU_Mapped"]) < 0.05 * local["buffers"]["CPU_Mapped"]
    # plan --rpc predicted that split before loading: each worker's weights, the host's embeddings
    code, plan = run_cli("plan", str(real_gguf), "--rpc", ",".join(workers))
    assert code == 0 and plan["rpc"]["fits"]
    for row in plan["rpc"]["workers"]:
        assert abs(row["weights_bytes"] / 2**20 - remote[f"RPC0[{row['endpoint']}]"]) < 0.5
    assert abs(plan["rpc"]["host_weights_bytes"] / 2**20 - split["buffers"]["CPU_Mapped"]) < 0.5


def test_a_lora_adapter_on_a_split_model_answers_like_the_local_one(
    real_gguf: Path, workers: list[str], tmp_path: Path
) -> None:
    """The adapter's tensors go to the devices of the layers they modify, workers included."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from make_tiny_adapters import config_from_gguf, make_adapter

    from edge_qwen.convert.lora import convert_lora

    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(config_from_gguf(real_gguf)))
    peft = make_adapter(
        tmp_path / "peft", shapes, seed=3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    lora = convert_lora(peft, tmp_path / "lora", base=real_gguf, outtype="f16").gguf
    local, split = answer(real_gguf, adapter=lora), answer(real_gguf, workers, adapter=lora)
    assert split["adapter"] == local["adapter"] != local["tokens"]  # the adapter changes the answer


def run_cli(*args: str, timeout: float = 120) -> tuple[int, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "edge_qwen.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_that_is_down_is_named_before_loading(real_gguf: Path) -> None:
    down = f"127.0.0.1:{free_port()}"
    code, data = run_cli("run", str(real_gguf), "hello", "--rpc", down)
    assert code == 2 and data["error"]["type"] == "RpcWorkerError"
    assert down in data["error"]["message"] and "edge-qwen worker" in data["error"]["message"]


def test_a_worker_stops_on_sigterm_and_refuses_what_is_unsafe_or_taken() -> None:
    port = free_port()
    proc = start_worker(port, "--json")
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and json.loads(stdout.strip().splitlines()[-1])["stopped_by"] == "SIGTERM"
    code, data = run_cli("worker", "--host", "0.0.0.0", "--port", str(port))
    assert (
        code == 2 and "--allow-remote" in data["error"]["message"] and "WireGuard" in data["error"]["message"]
    )
    with socket.create_server(("127.0.0.1", port)):  # the port is taken
        code, data = run_cli("worker", "--port", str(port), timeout=30)
    assert code == 2 and "in use" in data["error"]["message"]


def test_doctor_reports_each_worker(workers: list[str]) -> None:
    down = f"127.0.0.1:{free_port()}"
    code, data = run_cli("doctor", "--offline", "--rpc", f"{workers[0]},{down}")
    assert code == 0 and data["llama_cpp"]["rpc"] is True
    up, gone = data["rpc_workers"]
    assert (
        up["reachable"] and up["version"].startswith("7.") and up["free_bytes"] > 0 and up["latency_ms"] >= 0
    )
    assert not gone["reachable"] and "connection refused" in gone["error"]
    assert "1 of 2 RPC worker(s) unreachable" in data["verdict"]


def test_a_tensor_split_moves_the_layers_as_plan_predicts(real_gguf: Path, workers: list[str]) -> None:
    code, plan = run_cli("plan", str(real_gguf), "--rpc", ",".join(workers), "--tensor-split", "1,3")
    assert code == 0 and [r["layers"] for r in plan["rpc"]["workers"]] == [7, 17]  # + the output on the 2nd
    loaded = answer(real_gguf, workers, "1,3")
    for row in plan["rpc"]["workers"]:
        assert abs(row["weights_bytes"] / 2**20 - loaded["buffers"][f"RPC0[{row['endpoint']}]"]) < 0.5
    code, data = run_cli("run", str(real_gguf), "hi", "--rpc", workers[0], "--tensor-split", "1,1,1")
    assert code == 2 and "3 shares but the model is loaded on 1 device" in data["error"]["message"]


MEDIA_MAIN = r"""
import base64, io, json, sys
from PIL import Image
from edge_qwen.runtime import Model
sys.path.insert(0, sys.argv[4])
from make_tiny_qwen3vl import random_image
buf = io.BytesIO()
Image.fromarray(random_image(192, 128)).save(buf, format="PNG")
url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
rpc = sys.argv[3].split(",") if sys.argv[3] else ()
exact = {"cache_type_k": "f32", "cache_type_v": "f32", "flash_attn": False, "extra_buffers": False}
with Model.load(sys.argv[1], mmproj=sys.argv[2], n_ctx=1024, parallel=1, rpc=rpc, **exact) as m:
    answer = m.chat([{"role": "user", "content": parts}], temperature=0, max_tokens=12)
    print(json.dumps(list(answer.token_ids)))
"""


def test_an_image_question_to_a_split_qwen3_vl_is_answered_like_the_local_one(
    workers: list[str], tmp_path: Path
) -> None:
    """The projector runs on the main host (mtmd), the layers with their DeepStack inputs on the workers."""
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    sys.path.insert(0, str(scripts))
    from make_tiny_qwen3vl import make_qwen3vl_checkpoint

    from edge_qwen.convert import convert

    pair = convert(make_qwen3vl_checkpoint(tmp_path / "ck", "qwen3vl", "f32"), tmp_path / "out",
                   outtype="f32", evaluate=False, quiet=True)  # fmt: skip
    assert pair.mmproj is not None

    def ask(endpoints: str) -> list[int]:
        cmd = [sys.executable, "-c", MEDIA_MAIN, str(pair.gguf), pair.mmproj.path, endpoints, str(scripts)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    local = ask("")
    assert ask(",".join(workers)) == local and len(local) == 12


def start_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``edge-qwen serve`` with ``args`` on a free port, once /health answers; (process, base URL)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "edge_qwen.cli", "serve", *args, "--ctx", "1024", "--parallel", "1"]
    cmd += ["--threads", "1", "--port", str(port), "--log-level", "warning", "--drain-timeout", "10"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.communicate()[1][-2000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)


def ask(model: str, stream: bool = False) -> dict:
    return {
        "model": model, "max_tokens": 400, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "Write a long story about a robot."}],
    }  # fmt: skip


def test_a_worker_killed_mid_answer_fails_that_model_and_the_server_serves_the_other(
    real_gguf: Path,
) -> None:
    """``serve`` with the 0.5B twice: ``split`` over two workers, ``local`` on this machine. One
    worker is killed in the middle of a streamed answer: that stream ends with an error naming it,
    ``local`` still answers, /health shows ``split`` unavailable with the reason, a new request to
    it is a 503 naming the worker, and SIGTERM still stops the server."""
    import httpx

    ports = [free_port(), free_port()]
    workers = [start_worker(p) for p in ports]
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    server, url = start_serve(
        "--models", f"split={real_gguf},local={real_gguf}", "--rpc", "split=" + ",".join(endpoints)
    )
    try:
        events, errors = [], []
        started = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=ask("split", True), timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                (errors if "error" in event else events).append(event)
                if len(events) == 5:
                    workers[1].kill()  # SIGKILL: the socket closes under llama.cpp mid-answer
        took = time.monotonic() - started
        assert len(events) < 100 and took < 60
        assert errors and endpoints[1] in errors[0]["error"]["message"], errors
        # the other model still answers, on the same compute thread's replacement
        local = httpx.post(url + "/v1/chat/completions", json={**ask("local"), "max_tokens": 8}, timeout=60)
        assert local.status_code == 200 and local.json()["choices"][0]["message"]["content"]
        health = {m["name"]: m for m in httpx.get(url + "/health", timeout=5).json()["models"]}
        assert not health["split"]["available"] and endpoints[1] in health["split"]["load_error"]
        assert health["local"]["available"]
        again = httpx.post(url + "/v1/chat/completions", json=ask("split"), timeout=30)
        assert again.status_code == 503 and endpoints[1] in again.text, again.text
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.communicate()[1][-2000:]
    finally:
        for proc in [server, *workers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sigterm_stops_the_server_while_a_step_is_stuck_on_a_frozen_worker(real_gguf: Path) -> None:
    """A worker that stops answering without closing its socket (SIGSTOP: a frozen machine) leaves
    llama.cpp waiting inside a step for good. SIGTERM still stops the server: the drain timeout
    (10 s) for the stream, then as long again for the models, and it says which one it left."""
    import httpx

    port = free_port()
    worker = start_worker(port)
    server, url = start_serve("--models", f"split={real_gguf}", "--rpc", f"split=127.0.0.1:{port}")
    try:
        events = 0
        with httpx.stream("POST", url + "/v1/chat/completions", json=ask("split", True), timeout=60) as r:
            for line in r.iter_lines():
                events += line.startswith("data: {")
                if events == 3:
                    break
            worker.send_signal(signal.SIGSTOP)
            time.sleep(1)
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
        took = time.monotonic() - started
        stderr = server.communicate()[1]
        assert code == 0, stderr[-2000:]
        assert took < 30, took
        assert "split still busy in llama.cpp" in stderr, stderr[-2000:]
    finally:
        worker.send_signal(signal.SIGCONT)
        for proc in [server, worker]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
