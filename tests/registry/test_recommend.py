"""recommend: the most capable model that fits, the runner-up, and the reasons.

Table-driven with a stand-in estimator — registered file size + 0.5 GB for context and runtime —
so the expectations follow from the sizes in models.yaml alone (the scheduler's estimator is
tested in tests/scheduler; one test below runs recommend through it with real device profiles).
"""

from __future__ import annotations

import pytest

from edge_qwen.errors import ModelTooLargeError
from edge_qwen.registry import load_registry
from edge_qwen.registry.catalog import ModelEntry, Registry
from edge_qwen.registry.fit import scheduler_estimator, weight_bytes
from edge_qwen.registry.recommend import CURRENT, recommend

GB = 10**9


def older() -> Registry:
    """The registry without the current generation: the capability rules among older families."""
    return Registry({n: e for n, e in load_registry().models.items() if e.family not in CURRENT})


def file_plus_half_gb(entry: ModelEntry, quant: str, n_ctx: int) -> int:
    return weight_bytes(entry, quant) + GB // 2


@pytest.mark.parametrize(
    ("budget_gb", "task", "choice", "why"),
    [
        # 1.0 GB: only the 0.49 GB Qwen2.5 files (+0.5 = 0.99 GB) fit; of those only the Coder does code.
        (1.0, "code", "qwen2.5-coder-0.5b-instruct:q4_k_m", "only code model under 1 GB"),
        # 1.2 GB: Qwen3-0.6B Q8_0 (0.64 GB) now fits and has more parameters than the 0.5Bs.
        (1.2, None, "qwen3-0.6b:q8_0", "0.6B > 0.49B"),
        # 3.5 GB (a 4 GB Pi): Qwen3-4B Q4_K_M (2.50 GB) is the largest under 3.0 GB of file.
        (3.5, None, "qwen3-4b:q4_k_m", "4.0B beats 3.09B"),
        # 7 GB: Qwen3-8B (5.03 GB) beats Qwen2.5-7B (4.68 GB) on parameters (8.2B vs 7.61B).
        (7.0, "chat", "qwen3-8b:q4_k_m", "8.2B > 7.61B"),
        # maths at 7 GB: the Math models list no GGUF, so Qwen3-8B (which does maths) is chosen.
        (7.0, "math", "qwen3-8b:q4_k_m", "no Math GGUF"),
        # 21 GB: Qwen3-32B (19.76 GB) fits; Qwen3-30B-A3B (18.56 GB) counts as ~10B effective.
        (21.0, None, "qwen3-32b:q4_k_m", "32.8B dense beats a 30B-A3B MoE"),
        # 48 GB: Qwen2.5-72B (47.4 GB) is the largest single model under 47.5 GB.
        (48.0, "chat", "qwen2.5-72b-instruct:q4_k_m", "72.7B"),
    ],
)
def test_among_older_families_the_most_capable_fitting_model_wins(
    budget_gb: float, task: str | None, choice: str, why: str
) -> None:
    result = recommend(older(), file_plus_half_gb, int(budget_gb * GB), task=task)
    assert result["choice"]["spec"] == choice, why
    assert result["choice"]["estimate_bytes"] <= budget_gb * GB
    assert result["reasons"][0].startswith(choice)


@pytest.mark.parametrize(
    ("budget_gb", "task", "choice", "why"),
    [
        # Qwen3.5-0.8B (0.77B, converted to Q4_K_M: ~0.43 GB + 0.5) beats the 0.5B Coder and Qwen3-0.6B
        (1.0, "code", "qwen3.5-0.8b:q4_k_m", "current generation first"),
        (1.2, None, "qwen3.5-0.8b:q4_k_m", "Qwen3-0.6B Q8_0 fits too, but is older"),
        (3.5, None, "qwen3.5-4b:q4_k_m", "4.33B Qwen3.5 beats 4.02B Qwen3-VL and Qwen3-4B"),
        (7.0, "chat", "qwen3.5-9b:q4_k_m", "9.2B, ~5.2 GB"),
        (7.0, "vision", "qwen3.5-9b:q4_k_m", "natively multimodal, beats Qwen3-VL-8B"),
        # 27.3B dense beats the 35B-A3B MoE (~10B effective), and at 48 GB Qwen2.5-72B (older)
        (21.0, None, "qwen3.5-27b:q4_k_m", "dense 27B beats 35B-A3B"),
        (48.0, "chat", "qwen3.5-27b:q4_k_m", "current generation before Qwen2.5-72B"),
    ],
)
def test_the_current_generation_wins_where_one_fits(
    budget_gb: float, task: str | None, choice: str, why: str
) -> None:
    result = recommend(load_registry(), file_plus_half_gb, int(budget_gb * GB), task=task)
    assert result["choice"]["spec"] == choice, why
    assert result["choice"]["estimate_bytes"] <= budget_gb * GB
    assert any("current Qwen generation" in r for r in result["reasons"])


def test_a_current_generation_entry_is_converted_not_downloaded() -> None:
    """No Qwen3.5 GGUF is listed (hashes not verifiable here): the candidate is the quant ``pull``
    converts the checkpoint to, sized from the parameters."""
    result = recommend(load_registry(), file_plus_half_gb, int(1.2 * GB))
    entry = load_registry().get("qwen3.5-0.8b")
    assert not entry.gguf and result["choice"]["quant"] == "q4_k_m"
    assert result["choice"]["estimate_bytes"] == weight_bytes(entry, "q4_k_m") + GB // 2
    assert result["runner_up"]["spec"] == "qwen3-0.6b:q8_0"
    assert any("runner-up qwen3-0.6b:q8_0" in r and "older generation" in r for r in result["reasons"])


def test_the_runner_up_and_the_next_larger_model_are_shown() -> None:
    result = recommend(older(), file_plus_half_gb, 7 * GB, task="code")
    assert result["choice"]["spec"] == "qwen3-8b:q4_k_m"
    # Qwen2.5-Coder-7B has no confirmed size: its weights are estimated from 7.61B at 4.5 bits
    assert result["runner_up"]["name"] == "qwen2.5-coder-7b-instruct"
    assert result["next_larger"]["spec"] == "qwen3-14b:q4_k_m" and not result["next_larger"]["fits"]
    assert any("runner-up qwen2.5-coder-7b-instruct" in r for r in result["reasons"])


def test_context_longer_than_a_model_supports_excludes_it() -> None:
    # the 0.5B/1.5B/3B Qwen2.5 and Qwen3 0.6B/1.7B stop at 32K tokens; Qwen3-4B reaches 128K with YaRN
    result = recommend(older(), file_plus_half_gb, 3 * GB, n_ctx=65536)
    assert result["choice"]["spec"] == "qwen3-4b:q4_k_m"
    # Qwen3.5 runs 262K natively: at 300K only its YaRN range (to 1.01M) remains
    assert recommend(load_registry(), file_plus_half_gb, 3 * GB, n_ctx=300_000)["choice"]["spec"] == (
        "qwen3.5-4b:q4_k_m"
    )


def test_nothing_fits_says_what_the_smallest_needs() -> None:
    with pytest.raises(ModelTooLargeError, match=r"smallest, qwen3.5-0.8b:q4_k_m, needs 0.93 GB"):
        recommend(load_registry(), file_plus_half_gb, GB // 2)
    with pytest.raises(ModelTooLargeError, match=r"smallest, qwen2.5-.*0.5b.*needs 0.99 GB"):
        recommend(older(), file_plus_half_gb, GB // 2)


@pytest.mark.parametrize(
    ("device", "choice"),
    [
        ("raspberry-pi-4-4gb", "qwen3-4b:q4_k_m"),  # 3.46 GB budget
        ("raspberry-pi-5-8gb", "qwen3-8b:q4_k_m"),  # 7.19 GB budget
        ("laptop-16gb", "qwen3-14b:q4_k_m"),  # 11.2 GB budget
    ],
)
def test_through_the_scheduler_estimator_and_device_profiles(device: str, choice: str) -> None:
    """Fit alone (no speed judged): the largest model under each profile's budget."""
    from edge_qwen.registry.fit import resolve_target

    target = resolve_target(device)
    result = recommend(older(), scheduler_estimator(target.cpu_features), target.budget_bytes)
    assert result["choice"]["spec"] == choice
    current = recommend(load_registry(), scheduler_estimator(target.cpu_features), target.budget_bytes)
    assert current["choice"]["spec"] == CURRENT_FIT[device]


# what the whole registry picks per profile, fit alone: on a 4 GB Pi 4 Qwen3.5-4B's larger vocabulary
# (248K rows) leaves Qwen3-VL-4B as the largest current model under the budget
CURRENT_FIT = {
    "raspberry-pi-4-4gb": "qwen3-vl-4b-instruct:q4_k_m",
    "raspberry-pi-5-8gb": "qwen3.5-9b:q4_k_m",
    "laptop-16gb": "qwen3.5-9b:q4_k_m",
}


@pytest.mark.parametrize(
    ("device", "fits_but_slow", "choice"),
    [
        # a 4 GB Pi 4 holds Qwen3-4B but would decode it at ~1.6 tok/s; Qwen3-0.6B Q8_0 at ~6
        ("raspberry-pi-4-4gb", "qwen3-4b:q4_k_m", "qwen3-0.6b:q8_0"),
        # a Pi 5 holds Qwen3-8B (~2 tok/s); Qwen3-1.7B Q8_0 at ~5.5 tok/s is the most capable usable one
        ("raspberry-pi-5-8gb", "qwen3-8b:q4_k_m", "qwen3-1.7b:q8_0"),
        # with the current generation: Qwen3-VL-4B crawls on the Pi 4 (~1.8 tok/s), Qwen3.5-0.8B does not;
        # the Pi 5 holds Qwen3.5-9B (~2.2 tok/s) and answers with Qwen3.5-2B at ~9
        ("raspberry-pi-4-4gb+current", "qwen3-vl-4b-instruct:q4_k_m", "qwen3.5-0.8b:q4_k_m"),
        ("raspberry-pi-5-8gb+current", "qwen3.5-9b:q4_k_m", "qwen3.5-2b:q4_k_m"),
    ],
)
def test_a_model_that_fits_but_crawls_is_not_recommended(
    device: str, fits_but_slow: str, choice: str
) -> None:
    from edge_qwen.registry.fit import resolve_target

    device, _, which = device.partition("+")
    registry = load_registry() if which == "current" else older()
    target = resolve_target(device)
    estimator = scheduler_estimator(target.cpu_features)
    result = recommend(registry, estimator, target.budget_bytes, speed=target.throughput)
    assert result["choice"]["spec"] == choice and result["choice"]["decode_tok_s"] >= result["min_tok_s"]
    assert any(r.startswith(fits_but_slow) and "under the 5 tok/s floor" in r for r in result["reasons"])
    # the floor is the user's to move: at 1 tok/s the largest that fits wins again
    slow_ok = recommend(registry, estimator, target.budget_bytes, speed=target.throughput, min_tok_s=1)
    assert slow_ok["choice"]["spec"] == fits_but_slow


def test_when_nothing_reaches_the_floor_the_fastest_fitting_model_is_chosen_and_said() -> None:
    from edge_qwen.registry.fit import resolve_target
    from edge_qwen.registry.recommend import candidates

    target = resolve_target("raspberry-pi-4-4gb")
    estimator = scheduler_estimator(target.cpu_features)
    result = recommend(
        load_registry(), estimator, target.budget_bytes, speed=target.throughput, min_tok_s=500
    )
    found = candidates(load_registry(), estimator, target.budget_bytes, None, 4096, target.throughput)
    fastest = max(c.decode_tok_s or 0.0 for c in found if c.fits)
    assert result["choice"]["decode_tok_s"] == round(fastest, 1) and fastest < 500
    assert any("nothing that fits reaches 500 tok/s" in r for r in result["reasons"])
