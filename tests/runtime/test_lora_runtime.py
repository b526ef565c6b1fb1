"""LoRA adapters per request on one loaded base (the real Qwen2.5-Coder-0.5B with random adapters made
by the project's generator and converted by ``convert-lora``): hot swaps equal fresh loads, scale 0
is the base, different adapters in flight at once each equal their solo runs, and the memory
estimate counts the adapters."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_qwen.convert.lora import convert_lora
from edge_qwen.errors import ConfigError
from edge_qwen.runtime import GenerationResult, Model
from edge_qwen.sizing import estimate_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_adapters import config_from_gguf, make_adapter  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

ASK = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
N = 10


@pytest.fixture(scope="module")
def lora_files(real_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    shapes = root / "shapes"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(config_from_gguf(real_gguf)))
    files = {}
    for seed, name in enumerate(("a", "b"), start=1):
        peft = make_adapter(root / f"peft-{name}", shapes, seed=seed, r=4, lora_alpha=8,
                            target_modules=["q_proj", "v_proj"])  # fmt: skip
        files[name] = convert_lora(peft, root / name, base=real_gguf, outtype="f16").gguf
    return files


@pytest.fixture(scope="module")
def model(real_gguf: Path, lora_files: dict[str, Path]) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=1024, parallel=4, n_threads=2, adapters=lora_files) as loaded:
        yield loaded


def fresh(real_gguf: Path, lora_files: dict[str, Path], adapter: str | None) -> GenerationResult:
    with Model.load(real_gguf, n_ctx=1024, parallel=4, n_threads=2, adapters=lora_files) as m:
        return m.chat(ASK, temperature=0, max_tokens=N, adapter=adapter)


def test_hot_swaps_give_what_fresh_loads_give(
    real_gguf: Path, lora_files: dict[str, Path], model: Model
) -> None:
    expected = {name: fresh(real_gguf, lora_files, name).token_ids for name in (None, "a", "b")}
    assert len(set(expected.values())) == 3  # each adapter really changes the answer
    for name in (None, "a", "b", None, "a"):
        got = model.chat(ASK, temperature=0, max_tokens=N, adapter=name)
        assert got.token_ids == expected[name], f"after swapping to {name}"


def test_scale_zero_is_the_base(model: Model) -> None:
    base = model.chat(ASK, temperature=0, max_tokens=N)
    zero = model.chat(ASK, temperature=0, max_tokens=N, adapters={"a": 0.0})
    assert zero.token_ids == base.token_ids


def test_requests_with_different_adapters_in_flight_together_equal_their_solo_runs(model: Model) -> None:
    solo = {}
    for name in ("a", "b"):
        model.reset()  # each from an empty cache, as in the concurrent run below
        solo[name] = model.chat(ASK, temperature=0, max_tokens=N, adapter=name).token_ids
    model.reset()
    results: dict[str, GenerationResult] = {}

    def ask(name: str) -> None:
        results[name] = model.chat(ASK, temperature=0, max_tokens=N, adapter=name)

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert {n: r.token_ids for n, r in results.items()} == solo


def test_adapters_are_added_and_removed_by_name(model: Model, lora_files: dict[str, Path]) -> None:
    model.add_adapter("again", lora_files["a"])
    assert "again" in model.adapters
    assert model.chat(ASK, temperature=0, max_tokens=N, adapter="again").token_ids == model.chat(
        ASK, temperature=0, max_tokens=N, adapter="a"
    ).token_ids
    model.remove_adapter("again")
    with pytest.raises(ConfigError, match="no LoRA adapter named 'again'"):
        model.chat(ASK, max_tokens=1, adapter="again")
    with pytest.raises(ConfigError, match="already loaded"):
        model.add_adapter("a", lora_files["a"])


def test_the_memory_estimate_counts_the_adapters(real_gguf: Path, lora_files: dict[str, Path]) -> None:
    from edge_qwen.adapters import adapter_bytes

    plain = estimate_memory(real_gguf, n_ctx=1024)
    pairs = tuple((n, str(p)) for n, p in lora_files.items())
    with_loras = estimate_memory(real_gguf, n_ctx=1024, adapters=pairs)
    expected = sum(adapter_bytes(p) for p in lora_files.values())
    assert with_loras.total_bytes - plain.total_bytes == expected > 0
