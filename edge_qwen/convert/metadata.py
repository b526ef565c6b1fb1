"""GGUF metadata for a converted checkpoint: hyper-parameters, pooling, rope scaling and ``general.*``.

Every key is written through gguf-py's ``GGUFWriter.add_*`` helpers, which spell the keys from
``gguf.Keys``; nothing here types a key by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from ..errors import CheckpointError
from .architectures import HParams
from .pooling import add_pooling


@dataclass(frozen=True)
class Source:
    """Where a checkpoint came from (recorded in the GGUF and the manifest)."""

    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def name(self) -> str:
        return (self.repo_id or str(self.folder.resolve())).rstrip("/").split("/")[-1]

    def as_dict(self) -> dict[str, str | None]:
        return {"path": str(self.folder), "repo_id": self.repo_id, "revision": self.revision}


def add_hparams(writer: gguf.GGUFWriter, hp: HParams, ctx: int | None) -> int:
    """Write the architecture's hyper-parameters; return the context length written."""
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_block)
    if hp.n_ff:  # a hybrid MoE may have no dense width
        writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    if "head_dim" in hp.raw or hp.hybrid is not None:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    if hp.mrope_sections:
        writer.add_rope_dimension_sections(list(hp.mrope_sections))
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.arch.deepstack:
        writer.add_num_deepstack_layers(hp.n_deepstack)
    if hp.arch.moe:
        writer.add_expert_count(hp.n_expert)
        writer.add_expert_used_count(hp.n_expert_used)
        writer.add_expert_feed_forward_length(hp.n_ff_exp)
        if hp.n_ff_shexp:
            writer.add_expert_shared_feed_forward_length(hp.n_ff_shexp)
    if hp.pooling is not None:
        add_pooling(writer, hp.pooling)
    n_ctx = _add_rope_scaling(writer, hp, ctx)
    writer.add_context_length(n_ctx)
    return n_ctx


def _add_rope_scaling(writer: gguf.GGUFWriter, hp: HParams, ctx: int | None) -> int:
    """YaRN from config.json's ``rope_scaling`` or from ``--ctx`` above the native context.

    Qwen documents YaRN with factor = target / original context (original 32768 for Qwen2.5).
    """
    scaling = hp.raw.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    native = int(scaling.get("original_max_position_embeddings") or hp.n_ctx)
    factor = float(scaling.get("factor") or 1.0) if kind == "yarn" else 1.0
    if kind == "mrope":  # Qwen-VL's name for M-RoPE without scaling (sections written above)
        kind = None
    if kind not in (None, "default", "yarn"):
        raise CheckpointError(f"rope_scaling type {kind!r} is not supported; Qwen uses 'yarn' or none")
    if ctx is not None and ctx > native * factor:
        factor = ctx / native
    if factor <= 1.0:
        return hp.n_ctx
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(factor)
    writer.add_rope_scaling_orig_ctx_len(native)
    return int(round(native * factor))


def add_general(writer: gguf.GGUFWriter, source: Source, n_params: int) -> gguf.Metadata:
    """``general.*`` from the model card / config via gguf-py's Metadata heuristics, plus the source."""
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, source.folder, source.name, n_params)
    if meta.size_label is None:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    if source.repo_id:
        url = f"https://huggingface.co/{source.repo_id}"
        meta.source_repo_url = url
        meta.source_url = f"{url}/tree/{source.revision}" if source.revision else url
    meta.set_gguf_meta_model(writer)
    return meta
