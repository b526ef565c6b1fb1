"""Shared fixtures: the real Qwen artifacts (fetched once, cached outside the repo) and an
isolated, offline Hugging Face cache for every test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import fetch_assets  # noqa: E402

RSS_PROBE = ROOT / "tests" / "scheduler" / "_rss_probe.py"


def run_probe(*args: str) -> dict[str, Any]:
    """Run tests/scheduler/_rss_probe.py in a fresh interpreter (clean RSS) and return its JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(RSS_PROBE), *args]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture()
def probe() -> Any:
    return run_probe


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network or the user's real HF cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (ASSETS item 1), sha256-verified."""
    return fetch_assets.fetch_gguf(log=lambda msg: None)


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """Folder with the real Qwen3 tokenizer.json and tokenizer_config.json (ASSETS item 2)."""
    return fetch_assets.fetch_tokenizer(log=lambda msg: None)


@pytest.fixture(scope="session")
def tiny_vl_pair(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> tuple[Path, Path]:
    """A tiny random Qwen2-VL checkpoint (real Qwen3 tokenizer) converted to an F32 text GGUF and an
    F32 mmproj by edge-qwen: (text GGUF, mmproj)."""
    from make_tiny_multimodal import make_multimodal_checkpoint

    from edge_qwen.convert import convert

    root = tmp_path_factory.mktemp("tiny-vl-pair")
    ck = make_multimodal_checkpoint(
        root / "ck", arch="qwen2vl", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir
    )
    out = convert(ck, root / "out", outtype="f32", evaluate=False, quiet=True).as_dict()
    return Path(out["gguf"]), Path(out["mmproj"]["path"])


@pytest.fixture(scope="session")
def tiny_hybrid(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_hybrid(arch, dtype="f32", mtp=True, fused_experts=False, **config) -> Path``: a cached
    tiny random Qwen3.5 / Qwen3.5-MoE / Qwen3-Next checkpoint (scripts/make_tiny_hybrid.py), with
    the real vocabulary of its family. Read-only; config overrides make a separate folder."""
    from make_tiny_hybrid import make_hybrid

    root = tmp_path_factory.mktemp("tiny-hybrid")
    cache: dict[str, Path] = {}

    def make(
        arch: str, dtype: str = "f32", mtp: bool = True, fused_experts: bool = False, **config: Any
    ) -> Path:
        key = f"{arch}-{dtype}-{'mtp' if mtp else 'nomtp'}-{'fused' if fused_experts else 'split'}"
        key += "".join(f"-{k}={v}" for k, v in sorted(config.items())).replace("/", "_").replace(" ", "")
        if key not in cache:
            cache[key] = make_hybrid(
                root / str(len(cache)), arch=arch, dtype=dtype, mtp=mtp, fused_experts=fused_experts, **config
            )
        return cache[key]

    return make

@pytest.fixture(scope="session")
def hybrid_gguf(
    tmp_path_factory: pytest.TempPathFactory, tiny_hybrid: Callable[..., Path]
) -> Callable[..., Path]:
    """``hybrid_gguf(arch, quant=None, **config) -> Path``: a tiny random Qwen3.5 / Qwen3.5-MoE /
    Qwen3-Next checkpoint converted by edge-qwen to an F32 GGUF (its MTP head kept), or quantized
    from it to ``quant`` (``"q4_0"``: the same model, rounded; a draft that disagrees sometimes).
    Cached for the session."""
    from edge_qwen.convert import convert

    root = tmp_path_factory.mktemp("hybrid-gguf")
    cache: dict[str, Path] = {}

    def make(arch: str, quant: str | None = None, **config: Any) -> Path:
        key = f"{arch}-{quant}" + "".join(f"-{k}={v}" for k, v in sorted(config.items()))
        if key not in cache:
            result = convert(tiny_hybrid(arch, **config), root / str(len(cache)), outtype="f32",
                             quants=[quant] if quant else [], evaluate=False, quiet=True)  # fmt: skip
            cache[key] = Path(result.outputs[-1].path) if quant else result.gguf
        return cache[key]

    return make
