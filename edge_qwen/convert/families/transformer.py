"""Qwen2, Qwen2.5, Qwen3, their MoE variants and the Qwen-VL / Qwen2-Audio language models:
every layer is the same attention + MLP block, so names come straight from gguf-py's
``TensorNameMap`` and no tensor is reshaped. A Qwen3-Reranker adds ``cls.output``: the output
head's rows of its labels (see ..pooling)."""

from __future__ import annotations

import re

import gguf
import numpy as np

from ...errors import CheckpointError
from ..architectures import HParams, expected_shape
from ..safetensors import TensorRef
from ..views import ExpertColumns, TensorView
from .base import (
    IGNORED,
    MtpMode,
    Named,
    Source,
    check_shape,
    gguf_name,
    group_experts,
    no_place,
    require,
    stacked_shape,
)

EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$")
# Qwen3-VL-MoE: every layer's experts packed in two tensors, [E, d_in, d_out] (transposed)
PACKED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)(?:\.weight)?$")
T = gguf.MODEL_TENSOR
PER_LAYER = (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_NORM, T.FFN_NORM)


def prepare(hp: HParams, refs: dict[str, TensorRef], mtp: MtpMode) -> HParams:
    return hp


def name_tensors(refs: dict[str, TensorRef], hp: HParams, mtp: MtpMode) -> list[Named]:
    arch = hp.arch.gguf_arch
    name_map = gguf.TensorNameMap(arch, hp.n_layer)
    allowed = set(gguf.MODEL_TENSORS[arch])
    kept = {name: ref for name, ref in refs.items() if not IGNORED.match(name)}
    named: list[Named] = []
    rank = hp.pooling is not None and hp.pooling.rank
    if rank:
        named.append(_rank_head(kept, hp))
    if hp.arch.packed_experts:
        named += _packed_experts(kept, hp)
    for hf_name, sources in group_experts(kept, hp, EXPERT).items():
        if (hp.tied or rank) and hf_name == "lm_head.weight":
            # llama.cpp reuses token_embd when output.weight is absent; its converter writes a
            # reranker's untied head only as cls.output (a reranker never generates)
            continue
        mapped = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None or mapped[0] not in allowed:
            raise no_place(hf_name, hp)
        kind, name = mapped
        shape = stacked_shape(sources)
        check_shape(hf_name, shape, expected_shape(kind, hp, bias=hf_name.endswith(".bias")))
        named.append(Named(hf_name, kind, name, shape, list[Source](sources)))
    return named


def _rank_head(refs: dict[str, TensorRef], hp: HParams) -> Named:
    """``cls.output`` [labels, n_embd]: the rows of the output head (the token embeddings when
    tied) of each label's token, in label order."""
    assert hp.pooling is not None and len(hp.pooling.label_ids) == len(hp.pooling.labels)
    hf_name = "model.embed_tokens.weight" if hp.tied else "lm_head.weight"
    if hf_name not in refs:
        raise CheckpointError(
            f"a Qwen3-Reranker scores with its output head, but the checkpoint has no {hf_name}; "
            "it is incomplete (or set tie_word_embeddings if the head is the token embeddings)"
        )
    ref = refs[hf_name]
    check_shape(hf_name, tuple(ref.shape), expected_shape(T.OUTPUT, hp, bias=False))
    shape = (len(hp.pooling.label_ids), hp.n_embd)
    view = TensorView(ref, shape, rows=np.asarray(hp.pooling.label_ids, dtype=np.int64))
    return Named(hf_name, T.CLS_OUT, gguf_name(T.CLS_OUT), shape, [view])


def _packed_experts(refs: dict[str, TensorRef], hp: HParams) -> list[Named]:
    """Each layer's ``experts.gate_up_proj`` [E, d, 2f] as the gate and up stacks [E, f, d], and
    ``experts.down_proj`` [E, f, d] as the down stack [E, d, f]; removed from ``refs``."""
    e, f, d = hp.n_expert, hp.n_ff_exp, hp.n_embd
    out: list[Named] = []
    for hf_name in [n for n in refs if PACKED.match(n)]:
        m = PACKED.match(hf_name)
        assert m is not None
        bid, ref = int(m.group(1)), refs.pop(hf_name)
        if m.group(2) == "gate_up_proj":
            check_shape(hf_name, tuple(ref.shape), (e, d, 2 * f))
            parts = [(T.FFN_GATE_EXP, ExpertColumns(ref, 0, f)), (T.FFN_UP_EXP, ExpertColumns(ref, f, 2 * f))]
        else:
            check_shape(hf_name, tuple(ref.shape), (e, f, d))
            parts = [(T.FFN_DOWN_EXP, ExpertColumns(ref, 0, d))]
        for kind, view in parts:
            out.append(Named(hf_name, kind, gguf_name(kind, bid), view.shape, [view]))
    return out


def check_complete(names: set[str], hp: HParams, mtp: MtpMode) -> None:
    """Every tensor a block needs is present (a missing one would fail later inside llama.cpp)."""
    for kind in (T.TOKEN_EMBD, T.OUTPUT_NORM):
        require(names, gguf_name(kind))
    if hp.pooling is not None and hp.pooling.rank:
        require(names, gguf_name(T.CLS_OUT))
    for kind in PER_LAYER:
        for bid in range(hp.n_layer):
            require(names, gguf_name(kind, bid))


def add_metadata(writer: gguf.GGUFWriter, hp: HParams) -> None:
    """Nothing beyond the keys every family writes (see ..metadata)."""
