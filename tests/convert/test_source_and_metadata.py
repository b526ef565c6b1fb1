"""Hub sources (through huggingface_hub's cache, offline) and the GGUF metadata llama.cpp needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from edge_qwen.convert import convert
from edge_qwen.errors import DownloadError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def read_fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}


def llm(arch: str, key: str) -> str:
    return key.format(arch=arch)


def test_offline_and_not_cached_fails_fast_naming_the_repo(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="Qwen/Qwen3-0.6B@main is not in the local Hugging Face cache"):
        convert("Qwen/Qwen3-0.6B", tmp_path / "out", evaluate=False, quiet=True)
    assert not (tmp_path / "out").exists()


def test_repo_id_resolves_through_the_hub_cache_offline(tiny_checkpoint, tmp_path: Path) -> None:
    """A repo already in HF_HOME's cache converts with no network, and the revision is recorded."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--Qwen--Tiny-Qwen3"
    shutil.copytree(tiny_checkpoint("qwen3"), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)

    result = convert("Qwen/Tiny-Qwen3", tmp_path / "out", evaluate=False, quiet=True)

    assert result.source.repo_id == "Qwen/Tiny-Qwen3" and result.source.revision == COMMIT
    fields = read_fields(result.gguf)
    assert fields[gguf.Keys.General.SOURCE_URL].endswith(f"Qwen/Tiny-Qwen3/tree/{COMMIT}")
    manifest = json.loads(Path(f"{result.gguf}.json").read_text())
    assert manifest["source"]["revision"] == COMMIT and manifest["quant_type"] == "F16"


def test_qwen3_metadata(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3")
    cfg = json.loads((src / "config.json").read_text())
    fields = read_fields(convert(src, tmp_path, evaluate=False, quiet=True).gguf)
    K = gguf.Keys
    assert fields[K.General.ARCHITECTURE] == "qwen3"
    assert fields[llm("qwen3", K.LLM.BLOCK_COUNT)] == cfg["num_hidden_layers"]
    assert fields[llm("qwen3", K.LLM.CONTEXT_LENGTH)] == cfg["max_position_embeddings"]
    assert fields[llm("qwen3", K.Attention.HEAD_COUNT_KV)] == cfg["num_key_value_heads"]
    # head_dim differs from hidden/heads in Qwen3: llama.cpp needs key/value length.
    assert fields[llm("qwen3", K.Attention.KEY_LENGTH)] == cfg["head_dim"]
    assert fields[llm("qwen3", K.Attention.VALUE_LENGTH)] == cfg["head_dim"]
    assert fields[llm("qwen3", K.Rope.FREQ_BASE)] == pytest.approx(cfg["rope_theta"])
    assert fields[K.General.FILE_TYPE] == gguf.LlamaFileType.MOSTLY_F16
    assert fields[K.General.SIZE_LABEL]


def test_moe_metadata_and_stacked_experts(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen2moe")
    cfg = json.loads((src / "config.json").read_text())
    path = convert(src, tmp_path, evaluate=False, quiet=True).gguf
    fields, K = read_fields(path), gguf.Keys
    assert fields[llm("qwen2moe", K.LLM.EXPERT_COUNT)] == cfg["num_experts"]
    assert fields[llm("qwen2moe", K.LLM.EXPERT_USED_COUNT)] == cfg["num_experts_per_tok"]
    assert fields[llm("qwen2moe", K.LLM.EXPERT_FEED_FORWARD_LENGTH)] == cfg["moe_intermediate_size"]
    assert (
        fields[llm("qwen2moe", K.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH)]
        == cfg["shared_expert_intermediate_size"]
    )
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    gate = tensors["blk.0.ffn_gate_exps.weight"]
    # GGUF lists dimensions innermost first: (hidden, expert ffn, experts).
    assert list(gate.shape) == [cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]]
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.ffn_gate_inp_shexp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_tied_embeddings_write_no_output_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    tied = convert(tiny_checkpoint("qwen2", tied=True), tmp_path / "a", evaluate=False, quiet=True).gguf
    untied = convert(tiny_checkpoint("qwen2", tied=False), tmp_path / "b", evaluate=False, quiet=True).gguf
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tied).tensors}
    assert "output.weight" in {t.name for t in gguf.GGUFReader(untied).tensors}


def test_ctx_above_native_writes_yarn(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen2")
    native = json.loads((src / "config.json").read_text())["max_position_embeddings"]
    fields = read_fields(convert(src, tmp_path, ctx=native * 4, evaluate=False, quiet=True).gguf)
    K = gguf.Keys
    assert fields[llm("qwen2", K.Rope.SCALING_TYPE)] == "yarn"
    assert fields[llm("qwen2", K.Rope.SCALING_FACTOR)] == pytest.approx(4.0)
    assert fields[llm("qwen2", K.Rope.SCALING_ORIG_CTX_LEN)] == native
    assert fields[llm("qwen2", K.LLM.CONTEXT_LENGTH)] == native * 4


def test_rope_scaling_block_in_config_writes_yarn(tiny_checkpoint, tmp_path: Path) -> None:
    src = Path(shutil.copytree(tiny_checkpoint("qwen2"), tmp_path / "ckpt"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}
    (src / "config.json").write_text(json.dumps(cfg))
    fields = read_fields(convert(src, tmp_path / "out", evaluate=False, quiet=True).gguf)
    assert fields[llm("qwen2", gguf.Keys.Rope.SCALING_FACTOR)] == pytest.approx(2.0)
    assert fields[llm("qwen2", gguf.Keys.LLM.CONTEXT_LENGTH)] == 8192


def test_bf16_output_and_chat_template_jinja_file(tiny_checkpoint, tmp_path: Path) -> None:
    """A template shipped as chat_template.jinja (newer transformers) is embedded too."""
    src = Path(shutil.copytree(tiny_checkpoint("qwen3"), tmp_path / "ckpt"))
    config = json.loads((src / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    (src / "chat_template.jinja").write_text(template)
    path = convert(src, tmp_path / "out", outtype="bf16", evaluate=False, quiet=True).gguf
    reader = gguf.GGUFReader(path)
    assert reader.fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents() == template
    types = {t.tensor_type for t in reader.tensors}
    assert types == {gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32}
