"""The registry commands through the CLI: models, pull's fit refusal, rm, recommend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_qwen.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_models_lists_the_registry_and_the_cached_file(
    capsys: pytest.CaptureFixture[str], real_gguf: Path
) -> None:
    code, data = run_json(capsys, "models")
    assert code == 0 and len(data["models"]) >= 24
    coder = next(m for m in data["models"] if m["name"] == "qwen2.5-coder-0.5b-instruct")
    assert coder["quants"][0]["cached"] and coder["quants"][0]["path"] == str(real_gguf)
    math = next(m for m in data["models"] if m["name"] == "qwen2.5-math-72b-instruct")
    assert math["quants"] == [] and math["license"] == "qwen"


def test_pull_refuses_what_will_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(capsys, "pull", "qwen2.5-72b-instruct", "--device", "raspberry-pi-4-4gb")
    assert code == 2
    assert data["error"]["type"] == "ModelTooLargeError"
    assert "--force" in data["error"]["message"] and "recommend" in data["error"]["message"]


def test_pull_of_a_cached_model_is_instant(capsys: pytest.CaptureFixture[str], real_gguf: Path) -> None:
    code, data = run_json(capsys, "pull", "qwen2.5-coder-0.5b-instruct:q4_k_m")
    assert code == 0 and data["source"] == "cache" and data["path"] == str(real_gguf)


def test_rm_removes_only_this_models_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    (tmp_path / "assets").mkdir()
    victim = tmp_path / "assets" / "Qwen3-4B-Q4_K_M.gguf"
    keep = tmp_path / "assets" / "Qwen3-8B-Q4_K_M.gguf"
    victim.write_bytes(b"GGUF")
    keep.write_bytes(b"GGUF")
    code, data = run_json(capsys, "rm", "qwen3-4b")
    assert code == 0 and data["removed"] == [str(victim)]
    assert not victim.exists() and keep.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("pull", "qwen2.5-0.5b-instruct:q9_z"), "does not make Q9_Z itself"),
        (("rm", "qwen2.5-0.5b-instruct:../../x"), "no such quant to remove"),
    ],
)
def test_an_unknown_quant_is_one_clear_error(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, data = run_json(capsys, *argv)
    assert code == 2 and data["error"]["type"] == "UnknownModelError"
    assert message in data["error"]["message"]


def test_rm_of_something_not_cached_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    assert main(["rm", "qwen3-4b"]) == 0
    assert capsys.readouterr().out.strip() == "qwen3-4b: nothing cached"


def test_recommend_explains_its_choice(capsys: pytest.CaptureFixture[str]) -> None:
    """On a Pi 4, Qwen3.5-2B fits but would crawl (~3.8 tok/s estimated): the current generation's
    usable model is chosen, and ``--min-speed`` moves the floor."""
    code, data = run_json(capsys, "recommend", "--device", "raspberry-pi-4-4gb", "--task", "code")
    assert code == 0 and data["target"] == "raspberry-pi-4-4gb"
    assert data["choice"]["spec"] == "qwen3.5-0.8b:q4_k_m" and data["choice"]["decode_tok_s"] >= 5
    assert data["runner_up"] is not None and len(data["reasons"]) >= 3
    assert "raspberry-pi-4-4gb" in data["speed_basis"]
    assert any("current Qwen generation" in r for r in data["reasons"])
    pi4 = ("recommend", "--device", "raspberry-pi-4-4gb", "--task", "code")
    code, data = run_json(capsys, *pi4, "--min-speed", "1")
    assert code == 0 and data["choice"]["spec"] == "qwen3.5-2b:q4_k_m"


def test_run_names_the_pull_command_for_a_model_not_downloaded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_QWEN_CACHE", str(tmp_path))
    code, data = run_json(capsys, "run", "qwen3-8b", "hello")
    assert code == 2 and data["error"]["type"] == "ModelNotCachedError"
    assert "edge-qwen pull qwen3-8b:q4_k_m" in data["error"]["message"]
