"""Build facts, offload planning, the extra-buffer decision, and setup.sh's backend choice."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_qwen import _llama, backends
from edge_qwen.gguf_header import read_header
from edge_qwen.settings import ModelSettings
from edge_qwen.sizing import offload
from edge_qwen.sizing.estimate import estimate, model_shape

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
MiB = 2**20

# llama_print_system_info() lines as llama.cpp prints them (the first from this machine)
CPU_ONLY = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
CUDA_AMX = (
    "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX512 = 1 | "
    "AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"
)


def test_system_info_is_parsed_per_backend() -> None:
    assert backends.parse_system_info(CPU_ONLY)["CPU"]["REPACK"] == "1"
    parsed = backends.parse_system_info(CUDA_AMX)
    assert parsed["CUDA"] == {"ARCHS": "890", "USE_GRAPHS": "1", "PEER_MAX_BATCH_SIZE": "128"}
    assert parsed["CPU"]["AMX_INT8"] == "1" and "ARCHS" not in parsed["CPU"]
    assert backends.parse_system_info("") == {}


def test_the_installed_build_reports_its_devices() -> None:
    info = backends.build_info()
    assert "CPU" in info.backends and info.error is None
    cpu = next(d for d in info.devices if d.type == "cpu")
    assert cpu.total_bytes > 0 and 0 < cpu.free_bytes <= cpu.total_bytes
    assert info.features == backends.parse_system_info(info.system_info)
    # llama.cpp: GPU offload is supported exactly when a GPU/iGPU device (or RPC) is registered
    # llama.cpp answers yes for any build with RPC (which setup.sh always adds); here it means a GPU
    assert info.rpc and info.gpu_offload == any(d.backend != "RPC" for d in info.gpu_devices)
    assert info.has_amx == _llama.build_has_amx()


# --- offload planning ----------------------------------------------------------------------------


def test_plan_offload_fills_from_the_last_layer() -> None:
    # 10 layers of 100 MiB + 10 MiB KV each, 200 MiB compute buffer on the device
    args = dict(
        n_layers=10, per_layer_bytes=100 * MiB, fixed_device_bytes=200 * MiB, kv_per_layer_bytes=10 * MiB
    )
    assert offload.plan_offload(**args, free_device_bytes=2000 * MiB) == 10
    assert offload.plan_offload(**args, free_device_bytes=2000 * MiB, output_bytes=150 * MiB) == 11
    assert offload.plan_offload(**args, free_device_bytes=1400 * MiB, output_bytes=150 * MiB) == 10
    assert offload.plan_offload(**args, free_device_bytes=750 * MiB) == 5  # 200 + 5 x 110 = 750
    assert offload.plan_offload(**args, free_device_bytes=749 * MiB) == 4
    assert offload.plan_offload(**args, free_device_bytes=300 * MiB) == 0  # compute buffer + 1 layer > free
    assert offload.plan_offload(**args, free_device_bytes=2000 * MiB, margin_bytes=1250 * MiB) == 5


def test_plan_offload_counts_uneven_layers_from_the_end() -> None:
    # llama.cpp offloads the last layers first: the big last layer decides
    assert offload.plan_offload(3, [10, 10, 50], 0, 0, 55) == 1
    assert offload.plan_offload(3, [50, 10, 10], 0, [1, 1, 1], 25) == 2
    with pytest.raises(ValueError, match="expected 3 per-layer sizes"):
        offload.plan_offload(3, [1, 2], 0, 0, 10)


@pytest.mark.real
def test_auto_gpu_layers_agrees_with_the_estimator(real_gguf: Path) -> None:
    """On recorded device figures, the chosen layer count fits by the estimator and one more does not."""
    shape = model_shape(read_header(real_gguf))
    settings = ModelSettings(n_ctx=4096)
    for free in (256 * MiB, 400 * MiB, 450 * MiB, 8 * 2**30):  # a tiny iGPU share ... an 8 GiB card
        n = offload.auto_gpu_layers(shape, settings, free)
        assert 0 <= n <= shape.n_layer + 1
        if n:
            placed = estimate(shape, dataclasses.replace(settings, n_gpu_layers=n), gpu=True)
            assert placed.device_bytes <= free
        if n <= shape.n_layer:
            more = estimate(shape, dataclasses.replace(settings, n_gpu_layers=n + 1), gpu=True)
            assert more.device_bytes > free
    assert offload.auto_gpu_layers(shape, settings, 8 * 2**30) == shape.n_layer + 1  # all, with output


# --- extra buffers: decided by the build, not the CPU flags ----------------------------------------


def test_extra_buffer_decision_follows_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_QWEN_EXTRA_BUFFERS", raising=False)
    decide = _llama.extra_buffers_decision
    assert decide(build_amx=False, compiler=("gcc", 12))[0] is True
    assert decide(build_amx=True, compiler=("gcc", 12)) == (False, decide(True, ("gcc", 12))[1])
    assert "GCC < 13" in decide(build_amx=True, compiler=("gcc", 12))[1]
    assert decide(build_amx=True, compiler=None)[0] is False  # unknown compiler: not trusted
    assert decide(build_amx=True, compiler=("gcc", 13))[0] is True
    assert decide(build_amx=True, compiler=("clang", 18))[0] is True
    monkeypatch.setenv("EDGE_QWEN_EXTRA_BUFFERS", "1")
    assert decide(build_amx=True, compiler=("gcc", 12)) == (True, "EDGE_QWEN_EXTRA_BUFFERS=1")


def test_library_compiler_reads_the_elf_comment(tmp_path: Path) -> None:
    gcc = tmp_path / "gcc.so"
    gcc.write_bytes(b"\x7fELF...\0GCC: (Debian 12.2.0-14+deb12u1) 12.2.0\0...")
    clang = tmp_path / "clang.so"
    clang.write_bytes(b"\0GCC: (Debian 12.2.0-14) 12.2.0\0Debian clang version 16.0.6 (15)\0")
    assert _llama.library_compiler(gcc) == ("gcc", 12)
    assert _llama.library_compiler(clang) == ("clang", 16)
    assert _llama.library_compiler(tmp_path / "missing.so") is None
    if _llama.cpu_library() is not None and _llama.cpu_library().suffix == ".so":  # type: ignore[union-attr]
        assert _llama.library_compiler() is not None  # the installed Linux build records its compiler


def _last_logits(path: Path, tokens: list[int], extra: bool) -> np.ndarray:
    import llama_cpp.llama_cpp as L

    _llama.init_backend()
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = extra
    model = L.llama_model_load_from_file(os.fsencode(path), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_threads = 512, 512, 512, 2
    ctx = L.llama_init_from_model(model, cparams)
    try:
        arr = (L.llama_token * len(tokens))(*tokens)
        assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) == 0
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        ptr = ctypes.cast(L.llama_get_logits_ith(ctx, -1), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


@pytest.mark.real
def test_multi_token_batch_decodes_with_extra_buffers(real_gguf: Path) -> None:
    """The batch that crashed AMX builds: 96 tokens in one llama_decode with extra buffers on."""
    use, why = _llama.extra_buffers_decision()
    if not use:
        pytest.skip(f"this build must not use extra buffers: {why}")
    tokens = [(i * 7919) % 150000 + 100 for i in range(96)]
    on, off = _last_logits(real_gguf, tokens, True), _last_logits(real_gguf, tokens, False)
    assert np.isfinite(on).all()
    assert int(on.argmax()) == int(off.argmax())
    assert float(np.abs(on - off).max()) < 0.05 * float(np.abs(off).max())  # repacked kernels, same maths


# --- scripts/_backend.sh: what setup.sh builds ----------------------------------------------------


def _fake_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _sh(snippet: str, tmp_path: Path, **env: str) -> str:
    base = {
        "PATH": f"{tmp_path / 'bin'}:{tmp_path / 'sys'}",
        "EQ_CUDA_HOME": str(tmp_path / "no-cuda"),
        "EQ_NVIDIA_PROC": str(tmp_path / "no-nvidia"),
        "EQ_CPUINFO": str(tmp_path / "cpuinfo"),
        "HOME": str(tmp_path),
    }
    cmd = f"set -euo pipefail; . {ROOT / 'scripts/_backend.sh'}; {snippet}"
    run = subprocess.run([BASH, "-c", cmd], env=base | env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.fixture
def fake_machine(tmp_path: Path) -> Path:
    """A PATH holding only the fakes a test adds and the few tools the script uses (so a real
    nvcc, clang or gcc-13 on this machine cannot change the answer)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "sys").mkdir()
    for tool in ("grep", "sed", "cut", "head", "uname", "cat"):
        (tmp_path / "sys" / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu sse avx2 avx512f\n")
    return tmp_path


def test_auto_picks_cuda_only_with_nvcc_and_a_gpu(fake_machine: Path) -> None:
    choose = 'eq_choose_backend; echo "$EQ_BACKEND|$EQ_WHY"'
    assert _sh(choose, fake_machine).startswith("cpu|auto: no macOS, no nvcc")
    _fake_tool(fake_machine / "bin", "nvcc", "echo nvcc")
    assert "no NVIDIA GPU visible" in _sh(choose, fake_machine)  # a toolkit alone builds for the CPU
    _fake_tool(fake_machine / "bin", "nvidia-smi", "echo 'GPU 0: NVIDIA RTX 4090 (UUID: GPU-1)'")
    assert _sh(choose, fake_machine).startswith("cuda|auto: nvcc at")
    assert _sh(choose, fake_machine, EDGE_QWEN_BACKEND="vulkan") == "vulkan|EDGE_QWEN_BACKEND=vulkan"
    bad = subprocess.run(
        [BASH, "-c", f". {ROOT / 'scripts/_backend.sh'}; EDGE_QWEN_BACKEND=rocm eq_choose_backend"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must be auto, cpu, cuda, metal or vulkan" in bad.stderr


def test_cmake_args_per_backend_and_the_amx_gcc12_fix(fake_machine: Path) -> None:
    args = 'eq_amx_fix 2>/dev/null; for b in cpu cuda metal vulkan; do echo "$b=$(eq_cmake_args $b)"; done'
    _fake_tool(
        fake_machine / "bin",
        "cc",
        'case "$1" in --version) echo "cc (Debian 12.2.0) 12.2.0";; *) echo 12;; esac',
    )
    rpc = "-DGGML_RPC=on"  # every build can be an RPC worker or use one
    assert _sh(args, fake_machine, CC="cc").splitlines() == [
        f"cpu={rpc}",
        f"cuda=-DGGML_CUDA=on {rpc}",
        f"metal=-DGGML_METAL=on {rpc}",
        f"vulkan=-DGGML_VULKAN=on {rpc}",
    ]  # no AMX in the CPU: nothing else added
    (fake_machine / "cpuinfo").write_text("flags\t\t: fpu avx512f amx_tile amx_int8 amx_bf16\n")
    out = _sh(args + '; echo "cc=$EQ_CC"', fake_machine, CC="cc", CMAKE_ARGS="-DLLAMA_X=1").splitlines()
    assert out[0] == f"cpu={rpc} -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8 -DLLAMA_X=1"
    assert out[-1] == "cc="
    _fake_tool(fake_machine / "bin", "gcc-13", "echo 13")
    _fake_tool(fake_machine / "bin", "g++-13", "echo 13")
    out = _sh(args + '; echo "cc=$EQ_CC/$EQ_CXX"', fake_machine, CC="cc").splitlines()
    assert out[0] == f"cpu={rpc}" and out[-1] == "cc=gcc-13/g++-13"  # a good compiler keeps AMX


def test_installed_backend_is_read_from_the_libraries(fake_machine: Path) -> None:
    lib = fake_machine / "lib"
    lib.mkdir()
    assert _sh(f"eq_installed_backend {lib}", fake_machine) == "none"
    (lib / "libllama.so").touch()
    (lib / "libggml-cpu.so").touch()
    assert _sh(f"eq_installed_backend {lib}", fake_machine) == "cpu"
    (lib / "libggml-vulkan.so").touch()
    assert _sh(f"eq_installed_backend {lib}", fake_machine) == "vulkan"
    info = backends.build_info()  # the llama_cpp this interpreter runs: its libraries say the same
    names = {"CUDA": "cuda", "Vulkan": "vulkan", "MTL": "metal"}
    gpu = [names[b] for b in info.backends if b in names]
    assert _sh(f"eq_installed_backend {info.library_dir}", fake_machine) == (gpu[0] if gpu else "cpu")


def _fake_checkout(root: Path, libs: list[str]) -> Path:
    """A checkout with the real setup scripts and a fake .venv whose python logs each call."""
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "_backend.sh"):
        (root / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    (root / "pyproject.toml").write_text('dependencies = [\n    "llama-cpp-python==0.3.36",\n]\n')
    (root / ".venv/bin").mkdir(parents=True)
    _fake_tool(root / ".venv/bin", "python", f'echo "CMAKE_ARGS=[$CMAKE_ARGS] $*" >> {root / "calls.log"}')
    lib = root / ".venv/lib/python3.11/site-packages/llama_cpp/lib"
    lib.mkdir(parents=True)
    for name in libs:
        (lib / name).touch()
    return lib


def _setup(root: Path, fake_machine: Path, **env: str) -> list[str]:
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    for tool in ("env", "nproc", "dirname", "printf", "touch"):
        link = fake_machine / "sys" / tool
        if not link.exists():
            link.symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    base = {
        "PATH": f"{fake_machine / 'bin'}:{fake_machine / 'sys'}",
        "EQ_CUDA_HOME": str(fake_machine / "none"),
        "EQ_NVIDIA_PROC": str(fake_machine / "none"),
        "EQ_CPUINFO": str(fake_machine / "cpuinfo"),
    }
    run = subprocess.run(
        [BASH, str(root / "scripts/setup.sh")], env=base | env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return [c for c in calls if "fetch_assets" not in c and "build_report" not in c]


def test_setup_rebuilds_only_when_the_backend_changes(tmp_path: Path, fake_machine: Path) -> None:
    root = tmp_path / "checkout"
    lib = _fake_checkout(root, ["libllama.so", "libggml-cpu.so"])
    stamp = root / ".venv/.edge-qwen-installed"
    (first,) = _setup(root, fake_machine)  # no stamp yet: the package install builds it (with RPC)
    assert first.startswith("CMAKE_ARGS=[-DGGML_RPC=on] -m pip install -q --no-cache-dir -e .[test]")
    assert stamp.read_text() == "backend=cpu\ncmake_args=-DGGML_RPC=on\n"
    assert _setup(root, fake_machine) == []  # nothing to do
    stamp.write_text("")  # a stamp written by an older setup.sh: the plain CPU build, without RPC
    (old,) = _setup(root, fake_machine)
    assert old.startswith("CMAKE_ARGS=[-DGGML_RPC=on] -m pip install -q --force-reinstall --no-deps")
    (rebuild,) = _setup(root, fake_machine, EDGE_QWEN_BACKEND="vulkan")
    assert rebuild.startswith("CMAKE_ARGS=[-DGGML_VULKAN=on -DGGML_RPC=on] -m pip install -q --force")
    assert rebuild.endswith("--no-cache-dir llama-cpp-python==0.3.36")
    assert stamp.read_text() == "backend=vulkan\ncmake_args=-DGGML_VULKAN=on -DGGML_RPC=on\n"
    (lib / "libggml-vulkan.so").touch()  # what the real rebuild installs
    assert _setup(root, fake_machine, EDGE_QWEN_BACKEND="vulkan") == []
    (back,) = _setup(root, fake_machine)  # auto on this fake machine is the CPU again
    assert back.startswith("CMAKE_ARGS=[-DGGML_RPC=on] -m pip install -q --force-reinstall")


@pytest.mark.real
def test_plan_shows_the_host_device_split(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_qwen import cli

    assert cli.main(["plan", str(real_gguf), "--device-memory", "600MiB", "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["offload"]
    assert split["n_layers"] == 24 and 0 < split["n_gpu_layers"] <= 25
    assert split["device_bytes"] <= 600 * MiB and split["host_bytes"] > 0
    assert split["device_bytes"] == (
        split["device_weights_bytes"] + split["device_kv_bytes"] + split["device_compute_bytes"]
    )
    assert cli.main(["plan", str(real_gguf), "--device-memory", "8GiB"]) == 0
    assert "offload to a device with 8,192 MiB free: 24/24 layers + output" in capsys.readouterr().out
