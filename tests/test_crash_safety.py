"""Crash safety proven by SIGKILL: ``convert``, ``quantize``, ``convert-lora`` and ``pull`` run in a
child process (tests/crashhooks.py) that is killed at a deterministic point: early, mid-tensor,
just before and just after the rename, mid-download. After every kill:

* nothing sits under a final name unless it is complete and its sha256 matches its manifest;
* what is left is a hidden ``*.incomplete`` temp file (never mistaken for output), swept by the
  next run once its writer is gone;
* the next run succeeds (a killed download starts again: huggingface_hub 2.x resumes only within
  one process, and edge-qwen sweeps the orphaned partial).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))

from fakehub import FILENAME, FakeHub, fake_hub, sha, tiny_registry  # noqa: E402, F401
from make_tiny_adapters import make_adapter  # noqa: E402
from make_tiny_checkpoints import make_checkpoint  # noqa: E402

from edge_qwen import cli  # noqa: E402
from edge_qwen.manifest import sha256_file  # noqa: E402
from edge_qwen.registry import pull  # noqa: E402
from edge_qwen.registry.sources import find_cached, hf_cache_dir  # noqa: E402

pytestmark = pytest.mark.slow
HOOKS = Path(__file__).with_name("crashhooks.py")
MID_TENSOR = 15_000_000  # bytes into the ~25 MB F16 file: inside token_embd's data (the header is ~6 MB)


def child(point: str, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, str(HOOKS), point, *extra, "--", *args]


def killed(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    return proc


def honest(folder: Path) -> list[Path]:
    """Assert the folder's invariants after a kill; return the hidden temp files left behind."""
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for gguf in (p for p in visible if p.name.endswith(".gguf")):
        manifest = gguf.with_name(gguf.name + ".json")
        assert manifest.is_file(), f"{gguf.name} exists without its manifest"
        data = json.loads(manifest.read_text())
        assert (data["size"], data["sha256"]) == (gguf.stat().st_size, sha256_file(gguf)), gguf.name
    strays = [p.name for p in visible if not p.name.endswith((".gguf", ".gguf.json"))]
    assert not strays, strays
    hidden = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert all(p.name.endswith(".incomplete") for p in hidden), hidden
    return hidden


def main_json(*argv: str) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([*argv, "--json"])
    data = json.loads(out.getvalue())
    assert code == 0, data
    return data


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("crash") / "qwen2"
    return make_checkpoint(
        folder, arch="qwen2", dtype="bf16", shards=1, tied=None, tokenizer_dir=qwen3_tokenizer_dir
    )


@pytest.fixture(scope="module")
def f16(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crash-ref")
    return Path(main_json("convert", str(checkpoint), "-o", str(out), "--no-eval", "--quiet")["gguf"])


CONVERT_POINTS = [
    pytest.param(f"KILL@write:{MID_TENSOR}", id="mid-tensor"),
    pytest.param("KILL@rename-before:-f16.gguf", id="before-rename"),
    pytest.param("KILL@rename-after:-f16.gguf", id="after-rename"),  # the manifest is written first
]


@pytest.mark.parametrize("point", CONVERT_POINTS)
def test_convert_killed(point: str, checkpoint: Path, f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed(child(point, "convert", str(checkpoint), "-o", str(out), "--no-eval", "--quiet"))
    left = honest(out)
    if "write" in point:
        assert left and not (out / f16.name).exists()  # killed while the temp file was being written
    result = main_json("convert", str(checkpoint), "-o", str(out), "--no-eval", "--quiet")
    assert honest(out) == []  # the killed writer's temp file is swept
    assert result["outputs"][0]["sha256"] == sha256_file(f16)  # the same file as an uninterrupted run


QUANTIZE_POINTS = [
    pytest.param("KILL@quantize-log:0", id="early"),
    pytest.param("KILL@quantize-log:40", id="mid-tensor"),
    pytest.param("KILL@rename-before:-Q8_0.gguf", id="before-rename"),
    pytest.param("KILL@rename-after:-Q8_0.gguf", id="after-rename"),
]


@pytest.mark.parametrize("point", QUANTIZE_POINTS)
def test_quantize_killed(point: str, f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed(child(point, "quantize", str(f16), "-q", "q8_0", "-o", str(out), "--quiet"))
    left = honest(out) if out.exists() else []
    if point.endswith(":40"):
        assert left, "the kill should land while llama.cpp writes the temp file"
    result = main_json("quantize", str(f16), "-q", "q8_0", "-o", str(out), "--quiet")
    assert honest(out) == []
    assert result["outputs"][0]["quant_type"] == "Q8_0"


LORA_POINTS = [
    pytest.param("KILL@write:4096", id="mid-tensor"),
    pytest.param("KILL@rename-before:-lora-f16.gguf", id="before-rename"),
    pytest.param("KILL@rename-after:-lora-f16.gguf", id="after-rename"),
]


@pytest.mark.parametrize("point", LORA_POINTS)
def test_convert_lora_killed(point: str, checkpoint: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", checkpoint, seed=3, r=4, lora_alpha=8)
    out = tmp_path / "out"
    args = ("convert-lora", str(adapter), "-o", str(out), "--base", str(checkpoint))
    killed(child(point, *args))
    left = honest(out)
    if "write" in point:
        assert left and not list(out.glob("*.gguf"))
    result = main_json(*args)
    assert honest(out) == [] and Path(result["gguf"]).is_file()
    assert result["manifest"]["sha256"] == sha256_file(result["gguf"])


def _blobs() -> Path:
    return hf_cache_dir() / "models--edge-qwen-test--Tiny-GGUF" / "blobs"


def _wait(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_pull_killed_mid_download(fake_hub: FakeHub, tmp_path: Path) -> None:  # noqa: F811
    """huggingface_hub 2.x downloads into a process-unique temp file and resumes only within one
    process (a dropped connection, see test_hub_source); after a kill the next pull sweeps the
    orphaned partial and fetches the file again."""
    data = fake_hub.files[FILENAME]
    registry = tiny_registry(sha(data), len(data))
    fake_hub.stall_first_get_at = 1_000_000
    extra = ("--tiny-registry", sha(data), str(len(data)), "--hf-chunk", "65536")
    proc = subprocess.Popen(child("none", "pull", "tiny", "--source", "hub", "--quiet", extra=extra))
    try:
        _wait(fake_hub.stalled.is_set, "the download to start")
        _wait(
            lambda: any(p.stat().st_size > 0 for p in _blobs().glob("*.incomplete")), "partial bytes on disk"
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
        fake_hub.release.set()
    src = registry.get("tiny").source("q4_k_m")
    assert find_cached(src) is None  # nothing under the final name, only a hidden partial
    assert [p.name.endswith(".incomplete") for p in _blobs().iterdir()] == [True]
    result = pull("tiny", source="hub", registry=registry, progress=False)
    assert Path(result["path"]).read_bytes() == data
    assert not list(_blobs().glob("*.incomplete"))  # the killed download's partial was swept


@pytest.mark.parametrize("point", ["KILL@rename-src-before", "KILL@rename-src-after"])
def test_pull_killed_at_the_rename(point: str, fake_hub: FakeHub) -> None:  # noqa: F811
    data = fake_hub.files[FILENAME]
    registry = tiny_registry(sha(data), len(data))
    extra = ("--tiny-registry", sha(data), str(len(data)))
    killed(child(point, "pull", "tiny", "--source", "hub", "--quiet", extra=extra))
    src = registry.get("tiny").source("q4_k_m")
    assert find_cached(src) is None
    result = pull("tiny", source="hub", registry=registry, progress=False)
    assert Path(result["path"]).read_bytes() == data and find_cached(src) is not None
