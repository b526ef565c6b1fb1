"""``edge-qwen plan`` on the real GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_qwen.cli import main

MiB = 2**20


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_breakdown_and_fit(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = plan(capsys, str(real_gguf), "--ctx", "16384", "--budget", "2GiB")
    est = out["estimate"]
    parts = ("weights_bytes", "kv_bytes", "compute_resident_bytes", "output_bytes", "overhead_bytes")
    assert est["total_bytes"] == sum(est[k] for k in parts)
    assert est["kv_bytes"] == 192 * MiB and out["fits"] is True
    assert out["largest_context"] == 32768  # the trained context fits 2 GiB


def test_plan_reports_the_largest_context_that_fits(
    real_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = plan(capsys, str(real_gguf), "--ctx", "32768", "--budget", "700MiB")
    assert out["fits"] is False
    f16, q8 = out["largest_context_by_kv"]["f16"], out["largest_context_by_kv"]["q8_0"]
    assert f16 is not None and q8 is not None and 256 <= f16 < q8 < 32768 and f16 % 256 == 0


def test_plan_for_a_device_profile(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pi4 = plan(capsys, str(real_gguf), "--device", "raspberry-pi-4-4gb")
    pi5 = plan(capsys, str(real_gguf), "--device", "raspberry-pi-5-8gb")
    assert pi4["estimate"]["repack_bytes"] == 0 and pi5["estimate"]["repack_bytes"] > 0
    assert pi4["fits"] and pi5["fits"]


def test_plan_human_output(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(real_gguf), "--budget", "300MiB"]) == 0
    text = capsys.readouterr().out
    assert "KV cache" in text and "does NOT fit" in text and "largest context that fits" in text


def test_plan_bad_budget_is_a_clear_error(real_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(real_gguf), "--budget", "lots"]) == 2
    assert "3.5GB" in capsys.readouterr().err


def test_a_context_past_the_native_one_is_planned_with_a_warning(
    real_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --ctx 131072` fits in memory, but the 0.5B was trained for 32768 tokens: say so."""
    data = plan(capsys, str(real_gguf), "--ctx", "131072")
    assert data["native_context"] == 32768
    (warning,) = data["warnings"]
    assert "above the model's native context of 32768" in warning and "convert --ctx 131072" in warning
    assert plan(capsys, str(real_gguf), "--ctx", "4096")["warnings"] == []
