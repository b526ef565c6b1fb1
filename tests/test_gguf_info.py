"""``gguf_info`` reads what a GGUF is from its header; checked against the real Qwen2.5-Coder file."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from edge_qwen import cli
from edge_qwen.errors import GGUFFileError
from edge_qwen.gguf_info import gguf_info

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def info(real_gguf: Path) -> dict[str, Any]:
    return gguf_info(real_gguf)


def test_architecture_and_hyperparameters_match_the_model_card(info: dict[str, Any]) -> None:
    assert info["architecture"] == "qwen2"
    assert info["block_count"] == 24
    assert info["embedding_length"] == 896
    assert (info["head_count"], info["head_count_kv"]) == (14, 2)
    assert info["context_length"] == 32768
    assert info["rope"]["freq_base"] == 1_000_000.0
    assert info["expert_count"] is None  # dense model: MoE fields present but empty


def test_tokenizer_summary_names_the_chatml_end_token(info: dict[str, Any]) -> None:
    tok = info["tokenizer"]
    assert (tok["model"], tok["pre"], tok["vocab_size"]) == ("gpt2", "qwen2", 151936)
    assert (tok["eos_token_id"], tok["eos_token"]) == (151645, "<|im_end|>")
    assert tok["bos_token"] == "<|endoftext|>"
    assert info["chat_template"]["present"] and info["chat_template"]["length"] > 1000


def test_quant_mix_counts_tensors_per_ggml_type(info: dict[str, Any]) -> None:
    counts = {name: row["count"] for name, row in info["quant_mix"].items()}
    assert counts == {"Q5_0": 133, "F32": 121, "Q8_0": 13, "Q6_K": 12, "Q4_K": 12}
    assert info["file_type"] == "Q4_K_M"
    assert sum(row["bytes"] for row in info["quant_mix"].values()) == info["tensor_bytes"]


def test_parameter_count_and_sizes_are_consistent(info: dict[str, Any]) -> None:
    assert 600e6 < info["parameter_count"] < 650e6  # 0.5B body + untied 136M-element output matrix
    assert info["tensor_bytes"] < info["file_size_bytes"] == 491_400_064
    est = info["estimated_file_sizes"]
    assert est["Q4_0"] < est["Q8_0"] < est["F16"]


def test_size_estimates_follow_llama_cpps_own_type_choices(info: dict[str, Any]) -> None:
    """This file is Q4_K_M: llama.cpp's dry run re-derives its mix (896-wide rows fall back from Q4_K
    to Q5_0, Q6_K/Q8_0 where the mix wants more bits), so the Q4_K_M estimate is the file itself;
    nominal 4.5 bits per weight said 344 MiB beside this 469 MiB file."""
    assert info["estimated_file_sizes"]["Q4_K_M"] == pytest.approx(info["file_size_bytes"], rel=1e-3)


def test_truncated_file_is_reported_as_such(real_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with real_gguf.open("rb") as fh:
        cut.write_bytes(fh.read(3_000_000))  # ends in the middle of the vocabulary
    with pytest.raises(GGUFFileError, match="truncated or corrupt"):
        gguf_info(cut)


def test_a_file_that_is_not_gguf_is_rejected_with_its_magic(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("<html>404 Not Found</html>")
    with pytest.raises(GGUFFileError, match="not a GGUF file"):
        gguf_info(bogus)
    with pytest.raises(GGUFFileError, match="does not exist"):
        gguf_info(tmp_path / "missing.gguf")


def test_cli_info_json_has_the_documented_keys(real_gguf: Path) -> None:
    out = StringIO()
    with redirect_stdout(out):
        assert cli.main(["info", str(real_gguf), "--json"]) == 0
    data = json.loads(out.getvalue())
    for key in (
        "path",
        "architecture",
        "parameter_count",
        "quant_mix",
        "file_type",
        "context_length",
        "block_count",
        "embedding_length",
        "head_count",
        "head_count_kv",
        "rope",
        "tokenizer",
        "chat_template",
        "file_size_bytes",
        "estimated_file_sizes",
    ):
        assert key in data
    assert data["tokenizer"]["eos_token_id"] == 151645


def test_cli_info_on_a_bad_file_exits_2_with_a_json_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"\x00" * 64)
    out = StringIO()
    with redirect_stdout(out):
        assert cli.main(["info", str(bogus), "--json"]) == 2
    assert json.loads(out.getvalue())["error"]["type"] == "GGUFFileError"


def test_human_summary_lists_the_key_facts(info: dict[str, Any]) -> None:
    from edge_qwen.commands.info import format_info

    text = format_info(info)
    for fact in ("qwen2", "24 blocks", "14 heads, 2 KV heads", "32768 tokens", "'<|im_end|>'", "Q5_0   ×133"):
        assert fact in text


def test_metadata_cannot_send_terminal_escapes(info: dict[str, Any]) -> None:
    """A name that retitles the window (OSC) and clears the screen is printed as escapes."""
    from edge_qwen.commands.info import format_info, terminal_safe

    hostile = {**info, "name": "Qwen\x1b]0;pwned\x07\x1b[2J\u202e"}
    shown = terminal_safe(format_info(hostile))
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "Qwen\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in shown and "\n" in shown
