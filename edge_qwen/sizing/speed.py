"""How fast a model will run on a machine, before it is downloaded: a first-order model of llama.cpp
on a CPU.

* **Decode** streams every weight a token touches through memory once per token, so it is
  bandwidth-bound: ``tok/s = effective bandwidth / bytes read per token``. The bytes are the model's
  weights less the token embedding (one row of it is read), and for a MoE only the experts a token
  uses. It is also capped by compute (two operations per active weight).
* **Prefill** batches many tokens per weight read, so it is compute-bound:
  ``tok/s = effective FLOP/s / (2 x active parameters)``.

The effective rates are data: each device profile carries them with their basis (devices.yaml),
checked against published llama.cpp-engine measurements where there are some (a Raspberry Pi 5
decodes Qwen2.5-1.5B Q4_K_M at ~10 tok/s and 3B at ~5.2 tok/s); for this machine they come from
its cores and vector units (:func:`host_throughput`, calibrated on one AVX-512 Xeon). They are
estimates to rank and warn with, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9

# per physical core, by the best vector unit llama.cpp uses: (decode GB/s, prefill GFLOP/s).
# Calibrated on an AVX-512 (VNNI) Xeon, 2 cores: llama-bench tg128 45 tok/s and pp512 239 tok/s on
# Qwen2.5-Coder-0.5B Q4_K_M (392 MB read per token, ~1 GFLOP per token); the others are scaled by
# vector width and are rough.
PER_CORE: dict[str, tuple[float, float]] = {
    "avx512": (8.8, 120.0),
    "avx2": (7.0, 60.0),
    "dotprod": (3.0, 12.0),
    "neon": (2.0, 5.0),
}
HOST_BANDWIDTH_CAP_GB_S = 40.0  # dual-channel desktop memory: more cores do not stream faster


@dataclass(frozen=True)
class Throughput:
    """A machine's effective rates for llama.cpp on its CPU, and where they come from."""

    decode_bytes_s: float
    prefill_flop_s: float
    basis: str

    def decode_tok_s(self, bytes_per_token: float, flops_per_token: float) -> float:
        """Tokens a second one sequence generates: memory-bound, capped by compute."""
        by_memory = self.decode_bytes_s / max(1.0, bytes_per_token)
        by_compute = self.prefill_flop_s / max(1.0, flops_per_token)
        return min(by_memory, by_compute)

    def prefill_tok_s(self, flops_per_token: float) -> float:
        """Prompt tokens a second: compute-bound."""
        return self.prefill_flop_s / max(1.0, flops_per_token)


def host_throughput(cores: int, cpu_features: frozenset[str]) -> Throughput:
    """This machine's rates from its physical cores and its best vector unit (:data:`PER_CORE`)."""
    unit = next((u for u in PER_CORE if u in cpu_features), "neon")
    bandwidth, compute = PER_CORE[unit]
    return Throughput(
        decode_bytes_s=min(cores * bandwidth, HOST_BANDWIDTH_CAP_GB_S) * GB,
        prefill_flop_s=cores * compute * GB,
        basis=f"this machine: {cores} cores with {unit} (a rough per-core rate, not a measurement)",
    )
