"""The speed model against the published figures it is built on (Raspberry Pi 5, Ollama)."""

from __future__ import annotations

import pytest

from edge_qwen.registry import load_registry
from edge_qwen.registry.fit import token_cost
from edge_qwen.sizing.device import device_profile
from edge_qwen.sizing.speed import Throughput, host_throughput

# Qwen2.5 decode on a Raspberry Pi 5 with a llama.cpp-based engine (Ollama), tok/s:
# StratosphereLinuxIPS's measurements, as quoted in the newcomer issue.
PUBLISHED_PI5 = {("qwen2.5-1.5b-instruct", "q4_k_m"): 10.0, ("qwen2.5-3b-instruct", "q4_k_m"): 5.2}


@pytest.mark.parametrize(("model", "quant"), list(PUBLISHED_PI5))
def test_the_pi5_profile_reproduces_the_published_decode_speeds(model: str, quant: str) -> None:
    speed = device_profile("raspberry-pi-5-8gb").throughput
    assert speed is not None
    read, flops = token_cost(load_registry().get(model), quant)
    estimate = speed.decode_tok_s(read, flops)
    assert estimate == pytest.approx(PUBLISHED_PI5[(model, quant)], rel=0.2)


def test_decode_is_memory_bound_and_capped_by_compute() -> None:
    machine = Throughput(decode_bytes_s=10e9, prefill_flop_s=60e9, basis="test")
    assert machine.decode_tok_s(1e9, 1e9) == pytest.approx(10.0)  # bandwidth decides
    assert machine.decode_tok_s(1e8, 12e9) == pytest.approx(5.0)  # a huge compute per token decides
    assert machine.prefill_tok_s(3e9) == pytest.approx(20.0)


def test_a_moe_reads_only_its_active_experts() -> None:
    registry = load_registry()
    moe = registry.get("qwen3-30b-a3b")
    dense = registry.get("qwen3-32b")
    moe_read, moe_flops = token_cost(moe, "q4_k_m")
    dense_read, _ = token_cost(dense, "q4_k_m")
    assert moe_read < dense_read / 5 and moe_flops == 2 * moe.params_active


def test_this_machine_is_rated_from_its_cores_and_vector_unit() -> None:
    two = host_throughput(2, frozenset({"avx2", "avx512"}))
    many = host_throughput(64, frozenset({"avx2"}))
    assert two.decode_bytes_s == pytest.approx(17.6e9) and "avx512" in two.basis
    assert many.decode_bytes_s == pytest.approx(40e9)  # memory channels, not cores, bound it
