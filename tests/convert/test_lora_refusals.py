"""convert-lora reads adapters as PEFT writes them and refuses, naming the way out, what llama.cpp
cannot run — leaving nothing behind. No llama.cpp here: these run on tensor names, shapes and configs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_qwen import cli
from edge_qwen.convert.lora import convert_lora
from edge_qwen.errors import (
    AdapterBaseMismatchError,
    AdapterError,
    AdapterShapeError,
    UnsupportedAdapterError,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from make_tiny_adapters import make_adapter  # noqa: E402
from make_tiny_checkpoints import make_checkpoint  # noqa: E402

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def qwen2(tiny_checkpoint) -> Path:
    return tiny_checkpoint("qwen2", dtype="f32")


def refused(adapter: Path, tmp_path: Path, error: type[Exception], match: str, **kwargs) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        convert_lora(adapter, out, outtype="f32", **kwargs)
    assert not out.exists() or list(out.iterdir()) == [], "a refused conversion must leave nothing"


def edit_config(adapter: Path, **changes) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "bias = 'lora_only'.*Retrain with bias='none'"),
        ({"modules_to_save": ["lm_head", "embed_tokens"]}, "modules_to_save.*full trained copies.*merge"),
        ({"lora_alpha": 0}, "lora_alpha is 0"),
        ({"peft_type": "PREFIX_TUNING"}, "LoRA adapters only"),
    ],
)
def test_unsupported_peft_features(fields: dict, match: str, qwen2: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", qwen2, **fields)
    refused(adapter, tmp_path, UnsupportedAdapterError, match)


def test_rank_that_disagrees_with_the_config(qwen2: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", qwen2, r=4)
    edit_config(adapter, r=8)
    refused(adapter, tmp_path, AdapterShapeError, "do not have rank 8 as adapter_config.json says")


def test_shapes_of_another_base(qwen2: Path, qwen3_tokenizer_dir: Path, tmp_path: Path) -> None:
    wider = make_checkpoint(
        tmp_path / "wider", arch="qwen2", dtype="f32", tokenizer_dir=qwen3_tokenizer_dir, intermediate_size=96
    )
    adapter = make_adapter(tmp_path / "adapter", wider, target_modules=["up_proj"])
    refused(adapter, tmp_path, AdapterShapeError, "64 -> 96 features.*64 -> 128.*different base", base=qwen2)


def test_base_architecture_other_than_the_adapters(tiny_checkpoint, qwen2: Path, tmp_path: Path) -> None:
    """Declared base (a local Qwen3) and --base (a Qwen2) disagree; so does PEFT's auto_mapping."""
    adapter = make_adapter(tmp_path / "adapter", tiny_checkpoint("qwen3", dtype="f32"))
    refused(
        adapter,
        tmp_path,
        AdapterBaseMismatchError,
        "trained on a Qwen3ForCausalLM.*is a Qwen2ForCausalLM",
        base=qwen2,
    )
    mapped = make_adapter(
        tmp_path / "mapped",
        qwen2,
        base_model_name_or_path="org/elsewhere",
        auto_mapping={"base_model_class": "Qwen3ForCausalLM", "parent_library": "x"},
    )
    refused(mapped, tmp_path, AdapterBaseMismatchError, "Qwen3ForCausalLM", base=qwen2)


def test_targets_llama_cpp_adapters_do_not_cover(qwen2: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = {
        "base_model.model.lm_head.lora_A.weight": rng.standard_normal((8, 64)).astype(np.float32),
        "base_model.model.lm_head.lora_B.weight": rng.standard_normal((151936, 8)).astype(np.float32) * 0,
    }
    adapter = make_adapter(tmp_path / "head", qwen2, target_modules=["q_proj"], tensors=head)
    refused(adapter, tmp_path, UnsupportedAdapterError, "'lm_head'.*q/k/v/o_proj and gate/up/down_proj")
    embedding = {"base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((8, 151936), np.float32)}
    adapter = make_adapter(tmp_path / "embed", qwen2, target_modules=["q_proj"], tensors=embedding)
    refused(adapter, tmp_path, UnsupportedAdapterError, "token embedding")
    magnitude = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(64, np.float32)
    }
    adapter = make_adapter(tmp_path / "dora", qwen2, target_modules=["q_proj"], tensors=magnitude)
    refused(adapter, tmp_path, UnsupportedAdapterError, "DoRA magnitude")


def test_incomplete_adapters(qwen2: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", qwen2, target_modules=["q_proj"])
    shutil.copytree(adapter, tmp_path / "half")
    from make_tiny_checkpoints import read_safetensors, write_safetensors

    weights = read_safetensors(adapter / "adapter_model.safetensors")
    del weights["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    write_safetensors(tmp_path / "half" / "adapter_model.safetensors", weights, "f32")
    refused(tmp_path / "half", tmp_path, AdapterError, "layers.1.self_attn.q_proj: lora_B is missing")
    (adapter / "adapter_model.safetensors").unlink()
    refused(adapter, tmp_path, AdapterError, "no adapter_model.safetensors")
    (adapter / "adapter_config.json").unlink()
    refused(adapter, tmp_path, AdapterError, "no adapter_config.json")


def test_base_not_available_names_the_way_out(qwen2: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", qwen2, base_model_name_or_path="Qwen/Not-Cached")
    refused(adapter, tmp_path, AdapterError, "'Qwen/Not-Cached'.*pass --base")


def put_in_hub_cache(folder: Path, repo_id: str) -> None:
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_hub_adapter_and_declared_base_from_the_cache_offline(qwen2: Path, tmp_path: Path) -> None:
    """Both the adapter (a repo id) and its declared base come from HF_HOME's cache, no network."""
    put_in_hub_cache(qwen2, "Qwen/Tiny-Qwen2-Base")
    adapter = make_adapter(tmp_path / "adapter", qwen2, base_model_name_or_path="Qwen/Tiny-Qwen2-Base")
    put_in_hub_cache(adapter, "someone/tiny-sql-lora")

    result = convert_lora("someone/tiny-sql-lora", tmp_path / "out", outtype="f32")

    assert result.gguf.name == "tiny-sql-lora-f32.gguf"
    assert result.source.revision == COMMIT and result.base.arch.hf_name == "Qwen2ForCausalLM"
    fields = {k: f.contents() for k, f in gguf.GGUFReader(result.gguf).fields.items()}
    assert fields[gguf.Keys.General.SOURCE_URL].endswith(f"someone/tiny-sql-lora/tree/{COMMIT}")
    assert fields[gguf.Keys.General.BASE_MODEL_REPO_URL.format(id=0)].endswith("Qwen/Tiny-Qwen2-Base")
    manifest = json.loads(Path(f"{result.gguf}.json").read_text())
    assert manifest["source"]["revision"] == COMMIT and manifest["kind"] == "lora"


def test_cli_json_output_and_json_errors(qwen2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    adapter = make_adapter(tmp_path / "adapter", qwen2, r=4, lora_alpha=6, use_rslora=True)
    status = cli.main(
        ["convert-lora", str(adapter), "-o", str(tmp_path / "out"), "--outtype", "q8_0", "--json"]
    )
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["architecture"] == "Qwen2ForCausalLM" and result["rank"] == 4
    assert result["scale"] == pytest.approx(6 / 2)  # rsLoRA: alpha / sqrt(r)
    manifest = result["manifest"]
    assert manifest["quant_type"] == "Q8_0" and manifest["lora"]["gguf_alpha"] == pytest.approx(12.0)
    assert manifest["tensor_types"] == {"Q8_0": 14, "F16": 14}  # B's rows (the rank, 4) are no Q8_0 block
    assert Path(result["gguf"]).stat().st_size == manifest["size"]

    edit_config(adapter, use_dora=True)
    assert cli.main(["convert-lora", str(adapter), "-o", str(tmp_path / "out2"), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "UnsupportedAdapterError" and "DoRA" in error["message"]
