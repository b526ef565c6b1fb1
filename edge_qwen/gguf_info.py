"""Summarize a GGUF file from its header, without loading the weights.

Why: before downloading to a Pi or picking a quantization you want to know what a file *is*
(architecture, size, quant mix, context, tokenizer, template) in a second, not after a model load.
Only the header is parsed (:mod:`edge_qwen.gguf_header` skips the token arrays; no tensor data is read).
All metadata keys come from gguf-py's ``gguf.Keys`` constants.

``gguf_info(path)`` returns a dict with these stable keys (``null`` when the file lacks the value)::

    path                  str    absolute path
    file_size_bytes       int
    gguf_version          int
    architecture          str    general.architecture, e.g. "qwen2"
    name, basename, size_label, finetune     str | null   general.* descriptive fields
    file_type             str | null   e.g. "Q4_K_M", "F16" (general.file_type, llama_ftype name);
                                       "MIX" for a mix searched by ``quantize --target-size``
    searched_mix          str | null   that mix in one line (edge_qwen.quant_mix)
    file_type_id          int | null
    quantization_version  int | null
    tensor_count          int
    parameter_count       int    sum of every tensor's element count
    tensor_bytes          int    bytes of tensor data
    bits_per_weight       float  tensor_bytes * 8 / parameter_count
    quant_mix             {ggml type: {"count": int, "bytes": int}}, largest share first
    context_length, block_count, embedding_length, feed_forward_length,
    head_count, head_count_kv, key_length, value_length       int | list | null
    expert_count, expert_used_count, expert_shared_count, expert_feed_forward_length   int | null
    rope                  {"freq_base", "dimension_count", "scaling_type", "scaling_factor",
                           "original_context_length"}
    tokenizer             {"model", "pre", "vocab_size", "merges",
                           "bos_token_id", "bos_token", "eos_token_id", "eos_token",
                           "pad_token_id", "pad_token", "add_bos_token"}
    chat_template         {"present": bool, "length": int}
    hybrid                {"recurrent_layers": int, "attention_layers": int, "mtp_layers": int}
                          | null   Gated DeltaNet hybrids (Qwen3.5, Qwen3-Next): the trunk's
                          recurrent and full-attention blocks, and the MTP blocks after them
    vision                {"mrope_sections": [int], "deepstack_layers": int} | null   a language
                          model that reads images (Qwen-VL M-RoPE; Qwen3-VL's DeepStack layers)
    projector             {"kind": "vision" | "audio", "type", "blocks", "width", "heads",
                           "patch_size", "image_size", "projection_dim", "deepstack_layers"} | null
                          an mmproj GGUF (its language-model keys above are then null)
    estimated_file_sizes  {quant name: bytes}  size after quantizing to each
                          edge_qwen.quantize.QUANT_TYPES type, as llama.cpp's quantizer computes
                          it for this file's tensors (a dry run: its mixes and row-size fallbacks);
                          nominal bits/weight where llama.cpp cannot tell
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf

from .gguf_header import GGUFHeader, TensorInfo, read_header
from .quantize import QUANT_TYPES, dry_run_bytes

K = gguf.Keys


def _get(header: GGUFHeader, key: str) -> Any:
    return header.metadata.get(key)


def _token(header: GGUFHeader, token_id: Any) -> str | None:
    if not isinstance(token_id, int):
        return None
    return header.string_item(K.Tokenizer.LIST, token_id)


def _array_len(header: GGUFHeader, key: str) -> int | None:
    return header.array_lengths.get(key)


def _n_elements(t: TensorInfo) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def file_type_name(ftype: Any) -> str | None:
    """``15`` -> ``"Q4_K_M"`` (llama_ftype names without the MOSTLY_/ALL_ prefix)."""
    try:
        name = gguf.LlamaFileType(int(ftype)).name
    except (TypeError, ValueError):
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def quant_mix(header: GGUFHeader) -> dict[str, dict[str, int]]:
    """Tensor count and bytes per ggml type, largest share first."""
    mix: dict[str, dict[str, int]] = {}
    for t in header.tensors:
        row = mix.setdefault(t.type_name, {"count": 0, "bytes": 0})
        row["count"] += 1
        row["bytes"] += t.n_bytes
    return dict(sorted(mix.items(), key=lambda kv: -kv[1]["bytes"]))


def estimated_file_sizes(header: GGUFHeader, path: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Output size for each quantization type of the table: llama.cpp's own dry run for the file at
    ``path`` (the real per-tensor types), else nominal bits per weight of the main type."""
    matrix = sum(_n_elements(t) for t in header.tensors if len(t.shape) >= 2)
    vectors = sum(_n_elements(t) for t in header.tensors if len(t.shape) < 2)
    out = {}
    for name, q in QUANT_TYPES.items():
        data = dry_run_bytes(path, name) if path is not None else None
        nominal = matrix * q.bits_per_weight / 8 + vectors * 4
        out[name] = int(header.data_offset + (data if data is not None else nominal))
    return out


def _llm(header: GGUFHeader, arch: str) -> dict[str, Any]:
    keys = {
        "context_length": K.LLM.CONTEXT_LENGTH,
        "block_count": K.LLM.BLOCK_COUNT,
        "embedding_length": K.LLM.EMBEDDING_LENGTH,
        "feed_forward_length": K.LLM.FEED_FORWARD_LENGTH,
        "head_count": K.Attention.HEAD_COUNT,
        "head_count_kv": K.Attention.HEAD_COUNT_KV,
        "key_length": K.Attention.KEY_LENGTH,
        "value_length": K.Attention.VALUE_LENGTH,
        "expert_count": K.LLM.EXPERT_COUNT,
        "expert_used_count": K.LLM.EXPERT_USED_COUNT,
        "expert_shared_count": K.LLM.EXPERT_SHARED_COUNT,
        "expert_feed_forward_length": K.LLM.EXPERT_FEED_FORWARD_LENGTH,
    }
    return {name: _get(header, key.format(arch=arch)) for name, key in keys.items()}


def _rope(header: GGUFHeader, arch: str) -> dict[str, Any]:
    keys = {
        "freq_base": K.Rope.FREQ_BASE,
        "dimension_count": K.Rope.DIMENSION_COUNT,
        "scaling_type": K.Rope.SCALING_TYPE,
        "scaling_factor": K.Rope.SCALING_FACTOR,
        "original_context_length": K.Rope.SCALING_ORIG_CTX_LEN,
    }
    return {name: _get(header, key.format(arch=arch)) for name, key in keys.items()}


def _tokenizer(header: GGUFHeader) -> dict[str, Any]:
    ids = {"bos": K.Tokenizer.BOS_ID, "eos": K.Tokenizer.EOS_ID, "pad": K.Tokenizer.PAD_ID}
    info: dict[str, Any] = {
        "model": _get(header, K.Tokenizer.MODEL),
        "pre": _get(header, K.Tokenizer.PRE),
        "vocab_size": _array_len(header, K.Tokenizer.LIST),
        "merges": _array_len(header, K.Tokenizer.MERGES),
    }
    for role, key in ids.items():
        token_id = _get(header, key)
        info[f"{role}_token_id"] = token_id
        info[f"{role}_token"] = _token(header, token_id)
    info["add_bos_token"] = _get(header, K.Tokenizer.ADD_BOS)
    return info


def gguf_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header summary of a GGUF (keys documented in the module docstring).

    Raises :class:`~edge_qwen.errors.GGUFFileError` for a missing, non-GGUF or truncated file.
    """
    p = Path(path)
    header = read_header(p)
    arch = header.architecture
    params = sum(_n_elements(t) for t in header.tensors)
    tensor_bytes = sum(t.n_bytes for t in header.tensors)
    ftype = _get(header, K.General.FILE_TYPE)
    mix = _get(header, "edge_qwen.quant_mix")
    template = _get(header, K.Tokenizer.CHAT_TEMPLATE)
    return {
        "path": str(p.resolve()),
        "file_size_bytes": p.stat().st_size,
        "gguf_version": header.version,
        "architecture": arch or None,
        "name": _get(header, K.General.NAME),
        "basename": _get(header, K.General.BASENAME),
        "size_label": _get(header, K.General.SIZE_LABEL),
        "finetune": _get(header, K.General.FINETUNE),
        "file_type": "MIX" if mix else file_type_name(ftype) if ftype is not None else None,
        "searched_mix": mix,  # edge-qwen's searched per-tensor mix, when the file is one
        "file_type_id": ftype,
        "quantization_version": _get(header, K.General.QUANTIZATION_VERSION),
        "tensor_count": len(header.tensors),
        "parameter_count": params,
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": round(tensor_bytes * 8 / params, 3) if params else None,
        "quant_mix": quant_mix(header),
        **_llm(header, arch),
        "rope": _rope(header, arch),
        "tokenizer": _tokenizer(header),
        "chat_template": {"present": template is not None, "length": len(template or "")},
        # llama.cpp's quantizer takes language models only (a dry run on an mmproj can abort it)
        "estimated_file_sizes": estimated_file_sizes(header, None if arch == "clip" else p),
        "hybrid": _hybrid(header),
        "vision": _vision(header),
        "projector": _projector(header),
    }


def _vision(header: GGUFHeader) -> dict[str, Any] | None:
    sections = header.arch_value(K.Rope.DIMENSION_SECTIONS)
    if sections is None:
        return None
    deepstack = int(header.arch_value(K.LLM.NUM_DEEPSTACK_LAYERS) or 0)
    return {"mrope_sections": [int(x) for x in sections], "deepstack_layers": deepstack}


def _projector(header: GGUFHeader) -> dict[str, Any] | None:
    m = header.metadata
    if m.get(K.General.TYPE) != gguf.GGUFType.MMPROJ and header.architecture != "clip":
        return None
    vision = bool(m.get(K.Clip.HAS_VISION_ENCODER))
    ck = K.ClipVision if vision else K.ClipAudio
    kind_type = m.get(K.ClipVision.PROJECTOR_TYPE if vision else K.ClipAudio.PROJECTOR_TYPE)
    return {
        "kind": "vision" if vision else "audio",
        "type": kind_type or m.get(K.Clip.PROJECTOR_TYPE),
        "blocks": m.get(ck.BLOCK_COUNT),
        "width": m.get(ck.EMBEDDING_LENGTH),
        "heads": m.get(ck.Attention.HEAD_COUNT),
        "patch_size": m.get(K.ClipVision.PATCH_SIZE) if vision else None,
        "image_size": m.get(K.ClipVision.IMAGE_SIZE) if vision else None,
        "projection_dim": m.get(ck.PROJECTION_DIM),
        "deepstack_layers": sum(bool(b) for b in m.get(K.ClipVision.IS_DEEPSTACK_LAYERS) or []),
    }


def _hybrid(header: GGUFHeader) -> dict[str, int] | None:
    n_mtp = int(header.arch_value(K.LLM.NEXTN_PREDICT_LAYERS) or 0)
    n_layer = int(header.arch_value(K.LLM.BLOCK_COUNT) or 0) - n_mtp
    recurrent = header.recurrent_layers(n_layer)
    if not recurrent:
        return None
    n_rec = sum(recurrent)
    return {"recurrent_layers": n_rec, "attention_layers": n_layer - n_rec, "mtp_layers": n_mtp}
