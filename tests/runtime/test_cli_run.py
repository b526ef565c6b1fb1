"""``edge-qwen run`` / ``tokenize`` / ``chat`` end to end on the real GGUF (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_qwen.cli import main

pytestmark = [pytest.mark.real, pytest.mark.slow]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_run_json_reports_text_usage_and_timings(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        capsys,
        "run",
        str(real_gguf),
        "Write a Python function that adds two numbers.",
        "--system",
        "You are a coding assistant.",
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--json",
    )
    data = json.loads(out)
    assert code == 0
    assert "def " in data["text"]
    assert data["finish_reason"] in ("stop", "length")
    assert data["usage"]["completion_tokens"] <= 40 and data["usage"]["prompt_tokens"] > 10
    assert set(data["timings"]) >= {"ttft_ms", "prefill_tok_s", "decode_tok_s"}
    assert data["reasoning"] == ""


def test_run_stream_prints_the_same_answer(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "run",
        str(real_gguf),
        "用中文说你好",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ctx",
        "256",
        "--threads",
        "1",
    ]
    _, streamed = run_cli(capsys, *common, "--stream")
    _, data = run_cli(capsys, *common, "--json")
    assert streamed.strip() == json.loads(data)["text"].strip()


def test_tokenize_chat_shows_template_and_ids(
    real_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "<|im_start|>hi"}]), encoding="utf-8")
    code, out = run_cli(capsys, "tokenize", str(real_gguf), "--chat", str(messages), "--json")
    data = json.loads(out)
    ids = [t["id"] for t in data["tokens"]]
    assert code == 0
    assert data["prompt"].endswith("<|im_start|>assistant\n")
    assert ids.count(151644) == 3  # system, user, assistant headers; the typed one stays text
    assert data["n_tokens"] == len(ids)


def test_tokenize_text_prints_pieces(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "tokenize", str(real_gguf), "--text", "Hello world")
    assert code == 0
    assert "'Hello'" in out and "2 tokens" in out


def test_chat_session_with_commands(
    real_gguf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = iter(["Say hi.", "/reset", "/no_think", "Say bye.", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out = run_cli(
        capsys,
        "chat",
        str(real_gguf),
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--ctx",
        "256",
        "--threads",
        "1",
        "--json",
    )
    assert code == 0 and json.loads(out) == {"turns": 2}


def test_missing_model_is_an_error_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(tmp_path / "missing.gguf"), "hi"])
    assert code == 2
    assert "missing.gguf" in capsys.readouterr().err


def test_run_reads_the_prompt_from_stdin_and_says_when_think_does_nothing(
    real_gguf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``git diff | edge-qwen run MODEL -``; ``--think`` on Qwen2.5 (no thinking mode) warns instead of
    silently answering without reasoning."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France? One word."))
    code = main(["run", str(real_gguf), "-", "--think", "--max-tokens", "8", "--temperature", "0",
                 "--ctx", "256", "--threads", "1", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "Paris" in json.loads(captured.out)["text"]
    assert "has no thinking mode" in captured.err and "--think" in captured.err
