"""``edge-qwen chat``'s input handling with a fake model: slash commands (``/help``, unknown ones never
reach the model, slash-led text does), and readline history on a terminal only, saved to a file."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_qwen.cli import main
from edge_qwen.commands import chat, chat_input
from edge_qwen.commands.chat_input import COMMANDS, HISTORY_LINES, line_editing, parse_command


@dataclass
class Chunk:
    kind: str
    text: str


class FakeStream:
    def __init__(self, text: str) -> None:
        self.chunks = [Chunk("text", text)]
        self.result = Chunk("text", text)

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def cancel(self) -> None:
        pass


@dataclass
class FakeModel:
    thinks: bool = True
    path: Path = Path("fake.gguf")
    n_ctx: int = 256
    calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)
    resets: int = 0

    def chat_stream(self, messages: list[dict[str, Any]], **options: Any) -> FakeStream:
        self.calls.append(([dict(m) for m in messages], options))
        return FakeStream(f"answer {len(self.calls)}")

    def reset(self) -> None:
        self.resets += 1

    def sent(self) -> list[Any]:
        """The last user message of each call."""
        return [messages[-1]["content"] for messages, _ in self.calls]


@pytest.fixture()
def history_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "history" / "chat_history"
    monkeypatch.setenv("EDGE_QWEN_CHAT_HISTORY", str(path))
    return path


def run_chat(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: list[str],
    model: FakeModel | None = None, *extra: str,
) -> tuple[FakeModel, dict[str, Any], str]:  # fmt: skip
    """The whole command through the CLI, the model faked, ``lines`` typed (then Ctrl-D)."""
    model = model or FakeModel()
    typed = iter(lines)

    def fake_input(prompt: str = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(chat, "load_model", lambda args: contextlib.nullcontext(model))
    monkeypatch.setattr(chat, "fill_mmproj", lambda args: None)
    monkeypatch.setattr("builtins.input", fake_input)
    code = main(["chat", "fake.gguf", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return model, json.loads(captured.out), captured.err


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("/reset", ("reset", "")),
        ("  /help  ", ("help", "")),
        ("/image  cat.png ", ("image", "cat.png")),
        ("/no_think", ("no_think", "")),
        ("/frobnicate now", ("frobnicate", "now")),
        ("/usr/bin is what?", None),
        ("/Users/me", None),
        ("/5 of them", None),
        ("/ 2", None),
        ("//reset please", None),
        ("hello /reset", None),
        ("", None),
    ],
)
def test_which_lines_are_commands(line: str, parsed: tuple[str, str] | None) -> None:
    assert parse_command(line) == parsed


def test_help_lists_every_command_in_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    model, out, err = run_chat(monkeypatch, capsys, ["/help"])
    for usage, text in COMMANDS.values():
        assert any(usage in line and text in line for line in err.splitlines()), usage
    assert {"help", "reset", "think", "no_think", "image", "audio", "exit"} <= set(COMMANDS)
    assert model.calls == [] and out == {"turns": 0}


def test_an_unknown_command_is_answered_and_never_sent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    model, out, err = run_chat(monkeypatch, capsys, ["/frobnicate the answer", "/exit", "never read"])
    (line,) = err.strip().splitlines()
    assert "unknown command /frobnicate" in line and "/help" in line
    assert model.calls == [] and out == {"turns": 0}


def test_slash_led_text_goes_to_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    lines = ["/usr/bin is what?", "/Users/me/notes.txt", "//reset means what?", "// a comment"]
    model, out, err = run_chat(monkeypatch, capsys, lines)
    assert model.sent() == ["/usr/bin is what?", "/Users/me/notes.txt", "/reset means what?", "// a comment"]
    assert out == {"turns": 4} and err == ""


def test_commands_drive_the_conversation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    lines = ["hi", "", "/reset now", "/reset", "/no_think", "bye", "/think", "again", "/exit"]
    model, out, err = run_chat(monkeypatch, capsys, lines, None, "--system", "be brief")
    assert out == {"turns": 3} and model.resets == 1
    assert "usage: /reset" in err  # an argument it does not take: nothing done
    (first, _), (second, off), (third, on) = model.calls
    assert [m["content"] for m in first] == ["be brief", "hi"]
    assert [m["content"] for m in second] == ["be brief", "bye"]  # forgotten by /reset
    assert [m["content"] for m in third] == ["be brief", "bye", "answer 2", "again"]
    assert off["enable_thinking"] is False and on["enable_thinking"] is True


def test_think_on_a_model_without_thinking_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    model, _, err = run_chat(monkeypatch, capsys, ["/think", "hi"], FakeModel(thinks=False))
    assert "has no thinking mode" in err
    assert model.calls[0][1]["enable_thinking"] is None  # the model's preset stays


def test_image_without_a_path_is_a_usage_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    model, out, err = run_chat(monkeypatch, capsys, ["/image", "/audio  "])
    assert "usage: /image PATH" in err and "usage: /audio PATH" in err and model.calls == []


def test_a_piped_chat_neither_uses_readline_nor_writes_history(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], history_file: Path
) -> None:
    def no_readline() -> None:
        raise AssertionError("readline imported for piped input")

    monkeypatch.setattr(chat_input, "_import_readline", no_readline)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    _, out, _ = run_chat(monkeypatch, capsys, ["hi"])
    assert out == {"turns": 1} and not history_file.exists()


def test_piped_input_never_imports_readline(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from edge_qwen.commands import chat_input\n"
        "with chat_input.line_editing():\n"
        "    print(input())\n"
        "print('readline' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input="/usr/bin is what?\n", capture_output=True, text=True,
        env={"EDGE_QWEN_CHAT_HISTORY": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"}, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.split("\n")[:2] == ["/usr/bin is what?", "False"]
    assert not (tmp_path / "h").exists()


class FakeTTY:
    def isatty(self) -> bool:
        return True


class FakeReadline:
    """The slice of the readline module ``line_editing`` uses (1-based items, like CPython's)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add_history(self, line: str) -> None:
        self.items.append(line)

    def get_current_history_length(self) -> int:
        return len(self.items)

    def get_history_item(self, index: int) -> str | None:
        return self.items[index - 1] if 1 <= index <= len(self.items) else None


@pytest.fixture()
def fake_readline(monkeypatch: pytest.MonkeyPatch) -> FakeReadline:
    readline = FakeReadline()
    monkeypatch.setattr(chat_input, "_import_readline", lambda: readline)
    return readline


def test_history_is_loaded_and_saved_on_a_terminal(
    history_file: Path, fake_readline: FakeReadline, monkeypatch: pytest.MonkeyPatch
) -> None:
    history_file.parent.mkdir()
    history_file.write_text("older question\n/reset\n", encoding="utf-8")
    with line_editing(FakeTTY()):
        assert fake_readline.items == ["older question", "/reset"]  # Up / Ctrl-R find them
        fake_readline.add_history("what is /usr/bin?")  # what input() does with a typed line
    assert history_file.read_text(encoding="utf-8") == "older question\n/reset\nwhat is /usr/bin?\n"
    assert stat.S_IMODE(history_file.stat().st_mode) == 0o600
    assert [p.name for p in history_file.parent.iterdir()] == ["chat_history"]  # no temp file left

    again = FakeReadline()
    monkeypatch.setattr(chat_input, "_import_readline", lambda: again)
    with line_editing(FakeTTY()):
        assert again.items == ["older question", "/reset", "what is /usr/bin?"]  # the next session


def test_history_keeps_the_last_lines_and_merges_another_chat(
    history_file: Path, fake_readline: FakeReadline
) -> None:
    history_file.parent.mkdir()
    history_file.write_text("".join(f"line {i}\n" for i in range(HISTORY_LINES + 50)), encoding="utf-8")
    with line_editing(FakeTTY()):
        assert len(fake_readline.items) == HISTORY_LINES and fake_readline.items[-1] == "line 1049"
        fake_readline.add_history("mine")
        with history_file.open("a", encoding="utf-8") as f:  # another chat saved meanwhile
            f.write("theirs\n")
    lines = history_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == HISTORY_LINES and lines[-3:] == ["line 1049", "theirs", "mine"]


def test_history_can_be_turned_off(
    history_file: Path, fake_readline: FakeReadline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_QWEN_CHAT_HISTORY", "off")
    with line_editing(FakeTTY()):
        fake_readline.add_history("secret")
    assert chat_input.history_path() is None and not history_file.parent.exists()


def test_history_defaults_to_the_edge_qwen_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_QWEN_CHAT_HISTORY", raising=False)
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path / "cache"))
    assert chat_input.history_path() == tmp_path / "cache" / "chat_history"
    monkeypatch.delenv("EDGE_QWEN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert chat_input.history_path() == tmp_path / ".cache" / "edge-qwen" / "chat_history"


def test_an_unwritable_history_is_a_warning(
    tmp_path: Path, fake_readline: FakeReadline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_QWEN_CHAT_HISTORY", str(tmp_path))  # a folder: cannot be replaced by a file
    warnings: list[str] = []
    with line_editing(FakeTTY(), warn=warnings.append):
        fake_readline.add_history("hi")
    assert len(warnings) == 1 and "chat history not saved" in warnings[0]


def test_the_real_readline_module_round_trips(history_file: Path) -> None:
    readline = pytest.importorskip("readline")
    with line_editing(FakeTTY()):
        readline.add_history("typed through GNU readline or libedit")
    assert history_file.read_text(encoding="utf-8") == "typed through GNU readline or libedit\n"
    before = readline.get_current_history_length()
    with line_editing(FakeTTY()):
        assert readline.get_history_item(readline.get_current_history_length()).startswith("typed")
    assert readline.get_current_history_length() == before + 1  # loaded once more, nothing new saved
