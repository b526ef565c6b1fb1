"""Every CLI failure is an error message (JSON under ``--json``), never a traceback: a missing
optional extra, a closed stdout, Ctrl-C during convert and pull (exit 130, temp files removed), a
read-only output folder, a full disk (RLIMIT_FSIZE), a usage error."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))

from fakehub import FILENAME, FakeHub, fake_hub, sha  # noqa: E402, F401
from ggufgen import write_tiny_qwen2  # noqa: E402
from make_tiny_checkpoints import make_checkpoint  # noqa: E402

from edge_qwen import cli  # noqa: E402
from edge_qwen.registry.sources import hf_cache_dir  # noqa: E402

HOOKS = Path(__file__).with_name("crashhooks.py")


def run_main(*argv: str) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    text = out.getvalue().strip()
    return code, (json.loads(text) if text else None), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "qwen2"
    return make_checkpoint(
        folder, arch="qwen2", dtype="bf16", shards=1, tied=None, tokenizer_dir=qwen3_tokenizer_dir
    )


def no_temp_files(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.rglob("*") if p.name.endswith(".incomplete")]


def default_sigint() -> None:
    """Run in the child before exec: SIGINT as a terminal delivers it, even when this test run was
    started as a background job (which inherits an ignored SIGINT, and Python keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_without_the_server_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails as if not installed
    code, data, err = run_main("serve", "--models", "model.gguf", "--json")
    assert code == 2 and data is not None and data["error"]["type"] == "MissingExtraError"
    assert "pip install 'edge-qwen[server]'" in data["error"]["message"]
    code, data, err = run_main("serve", "--models", "model.gguf")
    assert code == 2 and data is None and "pip install 'edge-qwen[server]'" in err and "Traceback" not in err


def test_usage_errors_are_json_under_json() -> None:
    code, data, err = run_main("info", "--json")
    assert code == 2 and data is not None and data["error"]["type"] == "UsageError"
    assert "file" in data["error"]["message"]


@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "text"])
def test_a_closed_stdout_ends_quietly(json_flag: list[str], tmp_path: Path) -> None:
    """``edge-qwen info F --json | head -c 100``: the reader is gone before the answer is written."""
    model = write_tiny_qwen2(tmp_path / "tiny.gguf")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_qwen.cli", "info", str(model), *json_flag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_ctrl_c_during_convert_exits_130_and_removes_temp_files(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(HOOKS), "INT@write:15000000", "--", "convert", str(checkpoint), "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "--no-eval", "--json"], capture_output=True, text=True, timeout=300, preexec_fn=default_sigint
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["error"]["type"] == "KeyboardInterrupt"
    assert "Traceback" not in proc.stderr
    assert no_temp_files(out) and not list(out.glob("*.gguf"))


def test_ctrl_c_during_pull_exits_130_and_leaves_nothing(fake_hub: FakeHub) -> None:  # noqa: F811
    data = fake_hub.files[FILENAME]
    fake_hub.stall_first_get_at = 500_000
    extra = ["--tiny-registry", sha(data), str(len(data)), "--hf-chunk", "65536"]
    cmd = [sys.executable, str(HOOKS), "none", *extra, "--", "pull", "tiny", "--source", "hub", "--json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        assert fake_hub.stalled.wait(60), "the download did not start"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        fake_hub.release.set()
    assert proc.returncode == 130, err[-2000:]
    assert json.loads(out)["error"]["type"] == "KeyboardInterrupt" and "Traceback" not in err
    repo = hf_cache_dir() / "models--edge-qwen-test--Tiny-GGUF"
    assert no_temp_files(repo) and not list(repo.glob("snapshots/*/*"))


@contextlib.contextmanager
def read_only_folder(path: Path):  # type: ignore[no-untyped-def]
    """A folder nobody may write: chmod for a normal user; root ignores modes, so a read-only
    tmpfs is mounted over it (skipped where root may not mount)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_output_folder_is_an_error(checkpoint: Path, tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as out:
        code, data, err = run_main("convert", str(checkpoint), "-o", str(out), "--no-eval", "--json")
        assert code == 2 and data is not None, err
        assert "writable folder" in data["error"]["message"], data
        assert not list(out.iterdir())


def test_a_full_disk_is_an_error_and_leaves_nothing(checkpoint: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes past 4 MiB fail with EFBIG, as a full disk fails with ENOSPC."""
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    cmd = [
        sys.executable,
        "-m",
        "edge_qwen.cli",
        "convert",
        str(checkpoint),
        "-o",
        str(out),
        "--no-eval",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = json.loads(proc.stdout)["error"]
    assert "disk is full" in error["message"] and "Traceback" not in proc.stderr
    assert no_temp_files(out) and not list(out.glob("*.gguf"))


HOSTILE = [
    ("plan", "m.gguf", "--parallel", "0"),
    ("plan", "m.gguf", "--ctx", "-5"),
    ("plan", "m.gguf", "--ctx", "0"),
    ("plan", "m.gguf", "--ubatch", "0"),
    ("serve", "--port", "99999"),
    ("serve", "--port", "0"),
    ("serve", "--parallel", "0"),
    ("serve", "--ctx", "-1"),
    ("serve", "--max-concurrency", "0"),
    ("run", "m.gguf", "hi", "--ctx", "0"),
    ("run", "m.gguf", "hi", "--threads", "0"),
    ("run", "m.gguf", "hi", "--max-tokens", "-1"),
    ("run", "m.gguf", "hi", "--thinking-budget", "-3"),
    ("chat", "m.gguf", "--ctx", "many"),
    ("recommend", "--ctx", "0"),
    ("pull", "qwen3-0.6b", "--ctx", "0"),
    ("convert", "ck", "-o", "out", "--ctx", "0"),
    ("convert", "ck", "-o", "out", "--threads", "0"),
    ("quantize", "m.gguf", "-q", "q8_0", "--threads", "-2"),
]


@pytest.mark.parametrize("argv", HOSTILE, ids=" ".join)
def test_out_of_range_numbers_are_usage_errors_at_parse_time(argv: tuple[str, ...]) -> None:
    """A number out of its range ends before any work: exit 2, one error line naming the option
    and the range, the same as JSON under --json; never a traceback or a silent clamp."""
    code, data, err = run_main(*argv)
    assert code == 2 and data is None, err
    error_lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(error_lines) == 1 and argv[-2] in error_lines[0] and "expected" in error_lines[0], err
    assert "Traceback" not in err
    code, data, _ = run_main(*argv, "--json")
    assert code == 2 and data is not None and data["error"]["type"] == "UsageError"
    assert argv[-2] in data["error"]["message"]


def test_version_names_edge_qwen_and_its_llama_cpp() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert out.getvalue().startswith("edge-qwen ") and "llama-cpp-python" in out.getvalue()


def test_a_folder_is_called_a_folder(tmp_path: Path) -> None:
    """``run bad/`` said "no such file"; a checkpoint folder is pointed at convert."""
    empty = tmp_path / "bad"
    empty.mkdir()
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    for argv, expected in (
        (("info", str(empty)), "is a folder, not a .gguf file"),
        (("run", str(empty), "hi"), "is a folder, not a .gguf file"),
        (("info", str(checkpoint)), f"edge-qwen convert {checkpoint}"),
    ):
        code, data, err = run_main(*argv, "--json")
        assert code == 2 and data is not None and expected in data["error"]["message"], data
