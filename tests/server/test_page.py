"""The chat page at ``/``, driven in a real headless Chromium: a question typed into the page is
answered by the real model, streamed into the page; the API key is asked for and used; model text
that looks like HTML stays text.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
ended by a NUL byte on file descriptors 3 and 4), so no driver or extra package is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serverutil import running_server

from edge_qwen.server import SchedulerProvider, ServerConfig

pytestmark = [pytest.mark.real, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium page, spoken to with DevTools protocol commands."""

    def __init__(self) -> None:
        if CHROMIUM is None:
            pytest.skip("needs Chromium: apt-get install chromium (scripts/setup.sh does, as root)")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="eq-chromium-")
        args = [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", f"--user-data-dir={self._profile}", "about:blank"]  # fmt: skip

        def fds() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self._proc = subprocess.Popen(
            args, pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id = 0
        self._buffer = b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (awaiting a promise) and return its value."""
        result = self.call("Runtime.evaluate", self._session, expression=expression, awaitPromise=True,
                           returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", self._session, url=url)
        self.wait("document.readyState === 'complete' && document.querySelector('#model option') !== null")

    def wait(self, condition: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(f"Boolean({condition})"):
            assert time.monotonic() < deadline, f"the page never got to: {condition}"
            time.sleep(0.2)

    def ask(self, question: str) -> None:
        self.js(f"document.getElementById('prompt').value = {json.dumps(question)}")
        self.js("document.getElementById('send').click()")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


LAST_ANSWER = "[...document.querySelectorAll('.msg.assistant')].pop()"


def test_a_question_typed_into_the_page_is_answered_there(
    browser: Browser, provider: SchedulerProvider
) -> None:
    with running_server(provider, ServerConfig()) as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        browser.open(url + "/")
        assert browser.js("document.getElementById('model').value") == "qwen-coder"
        browser.ask("Write a Python function that adds two numbers.")
        browser.wait(f"{LAST_ANSWER} && {LAST_ANSWER}.dataset.done === '1'", timeout=120)
        text = browser.js(f"{LAST_ANSWER}.innerText")
        assert "def " in text, text
        assert browser.js(f"{LAST_ANSWER}.querySelectorAll('pre code').length") >= 1  # a rendered code block


def test_the_page_asks_for_the_api_key_and_then_answers(
    browser: Browser, provider: SchedulerProvider
) -> None:
    with running_server(provider, ServerConfig(api_key="k")) as url:
        browser.open(url + "/")
        browser.js("sessionStorage.clear()")
        browser.ask("Say hello.")
        browser.wait("!document.getElementById('key').hidden")
        assert "API key" in browser.js("document.querySelector('.msg.error').innerText")
        browser.js("document.getElementById('key-value').value = 'k'")
        browser.js("document.querySelector('#key button').click()")
        browser.js("document.getElementById('send').click()")  # the question went back into the box
        browser.wait(f"{LAST_ANSWER} && {LAST_ANSWER}.dataset.done === '1' && {LAST_ANSWER}.innerText", 120)


def test_model_text_that_looks_like_html_stays_text(browser: Browser, provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig()) as url:
        browser.open(url + "/")
        hostile = "<img src=x onerror=alert(1)> **bold** <script>alert(2)</script>\n```\n<b>code</b>\n```"
        html = browser.js(f"window.edgeQwenRender({json.dumps(hostile)}).innerHTML")
    assert "<img" not in html and "<script" not in html and "&lt;img src=x" in html
    assert "<strong>bold</strong>" in html and "&lt;b&gt;code&lt;/b&gt;" in html
