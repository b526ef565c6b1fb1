"""Checkpoints saved by transformers 4 and 5 convert alike.

``data/transformers/v4`` and ``v5`` hold the config.json that transformers 4.57.6 and 5.25.0 write
for the tiny test checkpoints (``save_pretrained`` of each family's config class, same values):
transformers 5 puts the rope base into ``rope_parameters`` and calls Qwen3-MoE's experts
``num_local_experts``. Before this was read, a transformers-5 Qwen checkpoint converted silently
with rope base 10,000 instead of 1,000,000.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
from test_correctness import F32_TOLERANCE, assert_same_logits, converted

from edge_qwen.convert.architectures import load_hparams
from edge_qwen.errors import CheckpointError

DATA = Path(__file__).with_name("data") / "transformers"
FAMILIES = ["qwen2", "qwen3", "qwen2moe", "qwen3moe", "qwen25vl", "qwen3vl", "qwen3vlmoe", "qwen3next"]


def config_folder(tmp_path: Path, version: str, family: str) -> Path:
    folder = tmp_path / f"{family}-{version}"
    folder.mkdir()
    shutil.copy(DATA / version / f"{family}.json", folder / "config.json")
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_both_layouts_give_the_same_hyperparameters(family: str, tmp_path: Path) -> None:
    v4 = load_hparams(config_folder(tmp_path, "v4", family))
    v5 = load_hparams(config_folder(tmp_path, "v5", family))
    fields = ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ctx", "rope_theta", "rms_eps",
              "tied", "n_expert", "n_expert_used", "n_ff_exp", "n_ff_shexp", "mrope_sections",
              "n_deepstack", "hybrid")  # fmt: skip
    assert {f: getattr(v5, f) for f in fields} == {f: getattr(v4, f) for f in fields}
    saved = {"qwen3next": 10_000_000.0}.get(family, 10.0 if "vl" in family else 1_000_000.0)
    assert v5.rope_theta == saved  # as saved, not 10,000
    if family.endswith("moe"):
        assert v5.n_expert == (6 if family == "qwen2moe" else 8)


@pytest.mark.parametrize("family", ["qwen2", "qwen3moe"])
def test_a_transformers5_checkpoint_converts_to_the_reference_logits(
    family: str, tiny_checkpoint, tokens: list[int], tmp_path: Path
) -> None:
    """The tiny checkpoint with the config.json transformers 5 writes for it: the F32 GGUF carries
    rope base 1e6 and computes what the independent numpy forward pass (reading ``rope_parameters``
    itself) computes."""
    checkpoint = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint(family, dtype="f32"), checkpoint)
    shutil.copy(DATA / "v5" / f"{family}.json", checkpoint / "config.json")
    gguf_path = converted(checkpoint, "f32", tmp_path)
    reader = gguf.GGUFReader(gguf_path)
    arch = {"qwen2": "qwen2", "qwen3moe": "qwen3moe"}[family]
    field = reader.get_field(gguf.Keys.Rope.FREQ_BASE.format(arch=arch))
    assert field is not None and float(field.contents()) == 1_000_000.0
    assert_same_logits(checkpoint, gguf_path, tokens, F32_TOLERANCE)


def test_two_layouts_that_disagree_are_refused(tmp_path: Path) -> None:
    folder = config_folder(tmp_path, "v5", "qwen3")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_theta"] = 10000.0  # a hand edit that left the old key beside the new one
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"rope_theta=10000.0 but rope_parameters.rope_theta=1000000.0"):
        load_hparams(folder)


def test_no_rope_base_means_the_transformers_default_of_the_family(tmp_path: Path) -> None:
    for family, default in (("qwen2", 10_000.0), ("qwen25vl", 1_000_000.0)):
        folder = config_folder(tmp_path, "v5", family)
        cfg = json.loads((folder / "config.json").read_text())
        for holder in (cfg, cfg.get("text_config", {})):
            holder.pop("rope_parameters", None)
            holder.pop("rope_theta", None)
            if family == "qwen25vl" and holder is not cfg:
                holder["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        (folder / "config.json").write_text(json.dumps(cfg))
        assert load_hparams(folder).rope_theta == default


def test_qwen3vl_without_a_rope_base_is_refused_not_guessed(tmp_path: Path) -> None:
    """Qwen3VLTextConfig's default base is 5,000,000 in transformers 4.57.6 and 500,000 in 5.25.0:
    no single default is the transformers one, so the converter asks for the value."""
    folder = config_folder(tmp_path, "v5", "qwen3vl")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["text_config"]["rope_parameters"]["rope_theta"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="rope_theta"):
        load_hparams(folder)


def test_a_qwen35_vision_config_saved_by_transformers_5_reads_as_the_tiny_generators_do(
    tmp_path: Path,
) -> None:
    """Qwen3.5 exists in transformers 5 only: its saved Qwen3_5Config (layer_types written out,
    rope_parameters with interleaved M-RoPE, the composite's tie_word_embeddings) gives the layer
    kinds, sections and rope base the converter's tests build by hand."""
    hp = load_hparams(config_folder(tmp_path, "v5", "qwen35vl"))
    assert hp.arch.hf_name == "Qwen3_5ForConditionalGeneration" and hp.tied
    assert hp.rope_theta == 10.0 and hp.mrope_sections == (2, 1, 1, 0)
    assert hp.hybrid is not None and hp.hybrid.n_mtp_declared == 1
    assert hp.hybrid.layer_kinds.count(hp.hybrid.layer_kinds[0]) == 3 and hp.hybrid.rope_dims == 8
