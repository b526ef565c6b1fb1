"""The chat page at ``/``, driven in a real headless Chromium: a question typed into the page is
answered by the real model, streamed into the page; the API key is asked for and used; Stop aborts
the stream; thinking is folded and attachments become content parts (against a stand-in server in
the page); model text that looks like HTML stays text.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
ended by a NUL byte on file descriptors 3 and 4), so no driver or extra package is needed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverutil import running_server

from edge_qwen.server import SchedulerProvider, ServerConfig

pytestmark = [pytest.mark.real, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# run before the page's own script, outside its CSP: what the page got wrong, for the tests to check
PROBLEMS = """
window.pageProblems = [];
addEventListener("error", (e) => pageProblems.push("error: " + e.message));
addEventListener("unhandledrejection", (e) => pageProblems.push("rejection: " + e.reason));
document.addEventListener("securitypolicyviolation", (e) => pageProblems.push("CSP: " + e.violatedDirective));
"""


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
        self.call("Page.enable", self._session)
        self.call("Page.addScriptToEvaluateOnNewDocument", self._session, source=PROBLEMS)

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

    def open(self, url: str, ready: str = "document.querySelector('#model option') !== null") -> None:
        self.call("Page.navigate", self._session, url=url)
        self.wait(f"document.readyState === 'complete' && {ready}", timeout=20)

    def attach(self, selector: str, path: Path) -> None:
        """Choose ``path`` in the file input ``selector`` (as the file picker would)."""
        found = self.call(
            "Runtime.evaluate", self._session, expression=f"document.querySelector('{selector}')"
        )
        self.call(
            "DOM.setFileInputFiles", self._session, files=[str(path)], objectId=found["result"]["objectId"]
        )

    def problems(self) -> list[str]:
        """Script errors and Content-Security-Policy violations on the page so far."""
        problems = self.js("window.pageProblems")
        assert isinstance(problems, list), "the problem recorder did not run"
        return problems

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
DONE = f"{LAST_ANSWER} && {LAST_ANSWER}.dataset.done === '1'"
HIDDEN = "document.getElementById({!r}).hidden"


def test_the_page_is_static_self_contained_and_locked_down(provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig(api_key="k")) as url:
        page = httpx.get(url + "/")  # the page needs no key; every API call it makes does
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in page.text and "style=" not in page.text  # nothing inline
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
        for path, kind in (("/page/page.js", "javascript"), ("/page/page.css", "css")):
            asset = httpx.get(url + path)
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
            assert "http://" not in asset.text and "https://" not in asset.text
        assert httpx.get(url + "/v1/models").status_code == 401


def test_a_question_typed_into_the_page_is_answered_there(
    browser: Browser, provider: SchedulerProvider
) -> None:
    with running_server(provider, ServerConfig()) as url:
        browser.open(url + "/")
        assert browser.js("[...document.querySelectorAll('#model option')].map((o) => o.value)") == [
            "qwen-coder"
        ]
        assert browser.js(HIDDEN.format("key")) and browser.js(HIDDEN.format("attach-image"))  # text-only
        browser.ask("Write a Python function that adds two numbers.")
        browser.wait(DONE, timeout=60)
        text = browser.js(f"{LAST_ANSWER}.innerText")
        outside_code = browser.js(
            f"(() => {{ const c = {LAST_ANSWER}.cloneNode(true);"
            " c.querySelectorAll('pre').forEach((e) => e.remove()); return c.textContent; })()"
        )
        assert "def " in text and "```" not in outside_code, text  # every fence became a code block
        assert browser.js(f"{LAST_ANSWER}.querySelectorAll('pre code').length") >= 1  # a rendered code block
        assert browser.js(f"{LAST_ANSWER}.querySelector('pre > button.copy').textContent") == "Copy"
        assert browser.js(HIDDEN.format("stop"))
        assert browser.problems() == []


def test_the_page_asks_for_the_api_key_and_stop_aborts_the_answer(
    browser: Browser, provider: SchedulerProvider
) -> None:
    with running_server(provider, ServerConfig(api_key="k")) as url:
        browser.open(url + "/", ready="true")
        browser.js("sessionStorage.clear()")
        browser.open(url + "/", ready="!document.getElementById('key').hidden")  # asked at once
        assert "401" in browser.js("document.querySelector('.msg.error').innerText")
        browser.js("document.getElementById('key-value').value = 'k'")
        browser.js("document.querySelector('#key button').click()")
        browser.wait("document.querySelector('#model option') !== null")
        assert browser.js("sessionStorage.getItem('edge-qwen-key')") == "k" and browser.js(
            HIDDEN.format("key")
        )
        browser.ask("Write a long Python module with ten functions, each with a docstring and a test.")
        browser.wait(f"{LAST_ANSWER} && {LAST_ANSWER}.innerText.trim()", timeout=30)  # streaming in
        browser.js("document.getElementById('stop').click()")
        browser.wait(DONE, timeout=10)
        assert browser.js("document.getElementById('status').textContent") == "stopped"
        assert browser.js(HIDDEN.format("stop"))
        deadline = time.monotonic() + 10  # the server saw the fetch go and let the generation go
        while httpx.get(url + "/health").json()["requests_in_flight"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert browser.problems() == []


HOSTILE = (
    'Hi <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script>\n\n'
    "**bold** and *it* and `<b>code</b>` and [link](javascript:window.pwned=3) and "
    "[ok](https://example.org/a)\n\n"
    "# Title <i>x</i>\n\n- one\n- <u>two</u>\n\n1. first\n   ```\n   x = 1\n   ```\n\n"
    "```python\nprint('<script>')\n```\n"
)


def test_model_text_that_looks_like_html_stays_text(browser: Browser, provider: SchedulerProvider) -> None:
    with running_server(provider, ServerConfig()) as url:
        browser.open(url + "/")
        shown = browser.js(
            f"(() => {{ const div = window.edgeQwenRender({json.dumps(HOSTILE)}); document.body.append(div);"
            " return {html: div.innerHTML, text: div.textContent,"
            " tags: [...div.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),"
            " hrefs: [...div.querySelectorAll('a')].map((a) => a.getAttribute('href')),"
            " codes: [...div.querySelectorAll('pre > code')].map((c) => c.textContent)}; })()"
        )
        assert browser.js("window.pwned === undefined")
    tags = set(shown["tags"])
    assert not {"img", "script", "i", "u", "b"} & tags
    assert {"p", "strong", "em", "code", "pre", "ul", "ol", "li", "a"} <= tags and tags & {"h3", "h1"}
    assert "&lt;img src=x onerror=" in shown["html"] and "&lt;script&gt;" in shown["html"]
    assert "<img src=x" in shown["text"] and "print('<script>')" in shown["text"]
    assert shown["codes"] == ["x = 1", "print('<script>')"] and "```" not in shown["text"]
    assert shown["hrefs"] == ["https://example.org/a"]  # a javascript: link stays text


# A stand-in for the server's answers, in the page itself: a model with a projector on /health and
# a chat stream that thinks first, cut into pieces that split its events mid-line.
FAKE_SERVER = """
window.sent = [];
const real = window.fetch;
window.fetch = async (path, options) => {
  if (path === "/health") return new Response(JSON.stringify({models: [{name: "qwen-coder", media: true}]}));
  if (path !== "/v1/chat/completions") return real(path, options);
  window.sent.push(JSON.parse(options.body));
  const deltas = [{reasoning_content: "Let me "}, {reasoning_content: "think <b>."},
                  {content: "Done <img src=x>."}];
  const events = deltas.map((delta) => "data: " + JSON.stringify({choices: [{index: 0, delta}]}) + "\\n\\n");
  const bytes = new TextEncoder().encode(events.join("") + "data: [DONE]\\n\\n");
  const body = new ReadableStream({start(c) {
    for (let i = 0; i < bytes.length; i += 7) c.enqueue(bytes.slice(i, i + 7));
    c.close();
  }});
  return new Response(body, {headers: {"Content-Type": "text/event-stream"}});
};
start();
"""
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f80f0000010101001827a9d80000000049454e44ae426082"
)


def test_thinking_is_folded_and_attachments_become_parts(
    browser: Browser, provider: SchedulerProvider, tmp_path: Path
) -> None:
    image, clip = tmp_path / "dot.png", tmp_path / "beep.wav"
    image.write_bytes(PNG)
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\0\1" * 160)
    with running_server(provider, ServerConfig()) as url:
        browser.open(url + "/")
        browser.js(FAKE_SERVER)
        browser.wait("!" + HIDDEN.format("attach-image") + " && !" + HIDDEN.format("attach-audio"))
        browser.attach("#image", image)
        browser.wait("document.getElementById('attached').textContent.includes('dot.png')")
        browser.attach("#audio", clip)
        browser.wait("document.getElementById('attached').textContent.startsWith('2 attachment')")
        browser.ask("What is this?")
        browser.wait(DONE)
        thinking = f"{LAST_ANSWER}.querySelector('details.thinking')"
        assert browser.js(f"{thinking}.textContent") == "ThinkingLet me think <b>."
        assert not browser.js(f"{thinking}.open") and not browser.js(f"{thinking}.hidden")  # folded, shown
        assert browser.js(f"{LAST_ANSWER}.querySelector('p').textContent") == "Done <img src=x>."
        browser.ask("And again?")  # the conversation goes on: the next request carries both turns
        browser.wait("document.querySelectorAll('.msg.assistant[data-done]').length === 2")
        first, second = browser.js("window.sent")
        assert browser.problems() == []
    parts = first["messages"][0]["content"]
    head, _, data = parts[0]["image_url"]["url"].partition(",")
    assert (
        parts[0]["type"] == "image_url" and head == "data:image/png;base64" and base64.b64decode(data) == PNG
    )
    audio = {"data": base64.b64encode(clip.read_bytes()).decode(), "format": "wav"}
    assert parts[1] == {"type": "input_audio", "input_audio": audio}
    assert parts[2] == {"type": "text", "text": "What is this?"} and first["stream"] is True
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1:] == [
        {"role": "assistant", "content": "Done <img src=x>."},
        {"role": "user", "content": "And again?"},
    ]
