"""The README's examples run as written.

Every ```python block and the set-up ```bash blocks of the README run here, in README order, from
the repository root, each in its own process (as a reader would paste them). Two blocks are not
run as blocks: the "two commands" (``demo.sh`` / ``test.sh``: CI runs the second, and the first is
this suite's real model answering), and the ``serve`` command, which
:func:`test_the_server_example_answers` starts on a free port and asks with the README's client
code, the port being the one substitution the README names ("the server's own address").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
from serverutil import free_port  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int

    @property
    def is_the_two_commands(self) -> bool:
        return "./scripts/test.sh" in self.code

    @property
    def is_serve(self) -> bool:
        return self.language == "bash" and "edge-qwen serve" in self.code

    @property
    def is_client(self) -> bool:
        return self.language == "python" and "OpenAI(" in self.code


def blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(m.group(1), m.group(2), text[: m.start()].count("\n") + 1)
        for m in FENCE.finditer(text)
        if m.group(1) in ("python", "bash")
    ]


def venv_env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, as in a shell where the README's set-up ran."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_block(block: Block, code: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    source = block.code if code is None else code
    shell = ["bash", "-euo", "pipefail", "-c", source]
    argv = [sys.executable, "-c", source] if block.language == "python" else shell
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=venv_env())


def test_the_readme_has_runnable_examples() -> None:
    found = blocks()
    assert sum(b.language == "python" for b in found) >= 6
    assert sum(b.is_serve for b in found) == 1 and sum(b.is_client for b in found) == 1


def test_every_example_runs_as_written(real_gguf: Path) -> None:
    for block in blocks():
        if block.is_the_two_commands or block.is_serve or block.is_client:
            continue
        done = run_block(block)
        where = f"README line {block.line} ({block.language})"
        assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


def test_the_server_example_answers(real_gguf: Path) -> None:
    found = blocks()
    serve = next(b for b in found if b.is_serve)
    client = next(b for b in found if b.is_client)
    port = free_port()
    server = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", f"{serve.code.strip()} --port {port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=venv_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"the README's serve command exited: {server.communicate()[1][-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the README's serve command did not come up in 120 s"
            time.sleep(0.5)
        done = run_block(client, client.code.replace("8080", str(port)))
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip(), "the client printed no answer"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
