"""``edge-qwen run --image/--audio --mmproj`` and ``chat``'s ``/image`` on a tiny random Qwen2-VL
pair (in-process CLI): the image reaches the model, and a missing projector or file is a clear
error (JSON under ``--json``), never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from edge_qwen.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_multimodal import random_image  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]
QUESTION = "What trends do you see?"


@pytest.fixture(scope="module")
def vl_pair(tiny_vl_pair: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_vl_pair


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "chart.png"
    Image.fromarray(random_image(168, 112, seed=7)).save(path)
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def common(gguf: Path) -> list[str]:
    return [str(gguf), "--max-tokens", "4", "--temperature", "0", "--ctx", "1024", "--threads", "2"]


def test_run_with_an_image_asks_about_it(
    vl_pair: tuple[Path, Path], chart: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf, mmproj = vl_pair
    code, plain = run_json(capsys, "run", *common(gguf), QUESTION, "--mmproj", str(mmproj))
    assert code == 0
    code, seen = run_json(capsys, "run", *common(gguf), QUESTION, "--mmproj", str(mmproj),
                          "--image", str(chart), "--image", str(chart))  # fmt: skip
    assert code == 0 and seen["text"]
    # two 168x112 images: 24 image tokens each, plus <|vision_start|> and <|vision_end|>
    assert seen["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 2 * 26


@pytest.fixture()
def unpaired(vl_pair: tuple[Path, Path], tmp_path: Path) -> Path:
    """The language model alone: no manifest beside it names a projector."""
    lone = tmp_path / vl_pair[0].name
    os.link(vl_pair[0], lone)
    return lone


def test_the_projector_convert_paired_with_the_model_is_found(
    vl_pair: tuple[Path, Path], chart: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf, mmproj = vl_pair
    explicit = run_json(
        capsys, "run", *common(gguf), QUESTION, "--mmproj", str(mmproj), "--image", str(chart)
    )
    found = run_json(capsys, "run", *common(gguf), QUESTION, "--image", str(chart))  # its manifest names it
    assert found[0] == explicit[0] == 0 and found[1]["usage"] == explicit[1]["usage"]


def test_an_image_without_mmproj_says_to_pass_it(
    unpaired: Path, chart: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_json(capsys, "run", *common(unpaired), QUESTION, "--image", str(chart))
    assert code == 2
    assert out["error"]["type"] == "ConfigError" and "--mmproj" in out["error"]["message"]


def test_a_missing_image_file_is_a_clear_error(
    vl_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf, mmproj = vl_pair
    missing = tmp_path / "nope.png"
    code, out = run_json(
        capsys, "run", *common(gguf), QUESTION, "--mmproj", str(mmproj), "--audio", str(missing)
    )
    assert code == 2 and str(missing) in out["error"]["message"]


def test_chat_attaches_images_to_the_next_message(
    vl_pair: tuple[Path, Path], chart: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    gguf, mmproj = vl_pair
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    lines = iter([f"/image {tmp_path / 'nope.png'}", f"/image {broken}", "What is this?",
                  f"/image {chart}", QUESTION, "And now?", "/exit"])  # fmt: skip
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code = main(["chat", *common(gguf), "--mmproj", str(mmproj), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out) == {"turns": 2}  # the turn with the broken PNG was dropped
    assert "cannot read image" in captured.err and "nope.png" in captured.err  # and the chat went on
    assert "(message not sent)" in captured.err
    assert "Traceback" not in captured.err


def test_chat_image_without_mmproj_says_to_pass_it(
    unpaired: Path, chart: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    lines = iter([f"/image {chart}", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code = main(["chat", *common(unpaired), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out) == {"turns": 0}
    assert "pass --mmproj FILE" in captured.err
