"""Seeded corruptions of a tiny GGUF: ``edge-qwen info`` answers every one (a summary or a
GGUFFileError naming the field and byte offset, never a traceback or a hang), and agrees with
llama.cpp: no file it accepts is one that llama.cpp then refuses to load.

The only corruption ``info`` cannot see is garbage in tensor *values* (the header stays valid);
llama.cpp loads those too, so they count like any other accepted file.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ggufgen import mutate, write_tiny_qwen2

from edge_qwen import cli
from edge_qwen.gguf_header import read_header

SEED = 20261201
N_MUTATIONS = 400
WORKER = Path(__file__).with_name("llama_load_worker.py")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError if the block runs longer than ``seconds`` (a hang in the reader)."""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def info_json(path: Path) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), deadline(5):
        code = cli.main(["info", str(path), "--json"])
    return code, json.loads(out.getvalue())


def llama_loads(paths: list[Path]) -> dict[str, dict]:
    """Load every path with llama.cpp in one worker process; a crash fails the test, naming the file."""
    proc = subprocess.run(
        [sys.executable, str(WORKER)],
        input="".join(f"{p}\n" for p in paths),
        capture_output=True,
        text=True,
        timeout=240,
    )
    answers = {r["path"]: r for r in map(json.loads, proc.stdout.splitlines())}
    missing = [str(p) for p in paths if str(p) not in answers]
    assert proc.returncode == 0 and not missing, f"llama.cpp crashed (rc {proc.returncode}) on {missing[:1]}"
    return answers


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen2(tmp_path_factory.mktemp("fuzz") / "tiny-qwen2.gguf")


def test_the_pristine_file_is_accepted_by_both(pristine: Path) -> None:
    code, info = info_json(pristine)
    assert code == 0 and info["architecture"] == "qwen2" and info["tensor_count"] == 14
    assert llama_loads([pristine])[str(pristine)]["loaded"]


def test_mutations_never_crash_info_and_it_agrees_with_llama_cpp(pristine: Path, tmp_path: Path) -> None:
    data = pristine.read_bytes()
    rng = random.Random(SEED)
    accepted: dict[str, str] = {}
    refused: dict[str, int] = {}
    for i in range(N_MUTATIONS):
        what, mutated = mutate(data, rng)
        path = tmp_path / f"m{i:03d}.gguf"
        path.write_bytes(mutated)
        code, out = info_json(path)  # a traceback or a hang fails here, naming nothing less than the file
        if code == 0:
            accepted[str(path)] = what
            continue
        assert code == 2 and out["error"]["type"] == "GGUFFileError", (what, out)
        message = out["error"]["message"]
        assert " at byte " in message and ("edge-qwen pull --verify" in message or "convert" in message), (
            message
        )
        field = message.split(" at byte ")[0].split(": ", 1)[-1]
        refused[field] = refused.get(field, 0) + 1
        path.unlink()
    answers = llama_loads([Path(p) for p in accepted])
    disagree = {accepted[p]: a["error"] for p, a in answers.items() if not a["loaded"]}
    assert not disagree, disagree
    # the generator reaches both sides: plenty of refusals of many kinds, and accepted files too
    assert len(refused) >= 30 and sum(refused.values()) >= N_MUTATIONS // 2
    assert len(accepted) >= 30


def test_errors_name_the_field_and_offset(pristine: Path, tmp_path: Path) -> None:
    data = bytearray(pristine.read_bytes())
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(Exception, match=r"data of blk\.0\.ffn_down\.weight at byte [\d,]+: ends at byte"):
        read_header(cut)
    huge = tmp_path / "huge.gguf"
    data[8:16] = (2**63).to_bytes(8, "little")  # tensor count
    huge.write_bytes(data)
    with pytest.raises(Exception, match=r"tensor count at byte 8: .* cannot fit"):
        read_header(huge)
