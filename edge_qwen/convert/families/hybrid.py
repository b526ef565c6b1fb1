"""Qwen3.5, Qwen3.5-MoE and Qwen3-Next: Gated DeltaNet (linear attention) layers between gated
full-attention layers, and a multi-token-prediction (MTP) head after the trunk.

The GGUF is what llama.cpp's converter (``conversion/qwen.py``) writes for the same checkpoint:

- zero-centred RMSNorm weights are stored as ``1 + w`` (every ``*norm.weight`` except the gated
  norm inside linear attention, which is a plain weight);
- ``A_log`` becomes ``A = -exp(A_log)``; ``dt_bias`` is ``ssm_dt.bias``; the conv kernel
  ``(C, 1, K)`` becomes ``(C, K)``;
- Qwen3.5: value heads grouped by key head are regrouped into the tiled order ggml broadcasts over
  (rows of the V part of ``in_proj_qkv``, ``in_proj_z``, ``in_proj_a/b``, ``A``, ``dt``, the V
  channels of the conv kernel, the columns of ``out_proj``); Qwen3-Next keeps them grouped and
  splits its fused ``in_proj_qkvz`` (q, k, v, z per key head) into ``attn_qkv`` and ``attn_gate``;
- fused MoE experts ``gate_up_proj (E, 2F, D)`` are split into gate and up;
- ``mtp.*`` becomes the block after the trunk (``nextn.eh_proj``, ``enorm``, ``hnorm``,
  ``shared_head_norm``), counted in ``block_count`` and ``nextn_predict_layers``.

Every change is a :class:`~..views.TensorView` (index arrays and an elementwise map), streamed.
"""

from __future__ import annotations

import re
from dataclasses import replace

import gguf
import numpy as np

from ...errors import CheckpointError
from ...gguf_header import RECURRENT_LAYERS
from ..architectures import HParams, expected_shape
from ..hybrid_config import Hybrid, LinearAttention
from ..safetensors import TensorRef
from ..views import TensorView, regroup
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

T = gguf.MODEL_TENSOR
EXPERT = re.compile(r"^((?:model|mtp)\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$")
LAYER = re.compile(r"^model\.layers\.(\d+)\.")
MTP_LAYER = re.compile(r"^mtp\.layers\.(\d+)\.(.+)$")
# mtp.<name>.weight -> the nextn tensor of the first block after the trunk
MTP_GLOBALS = {
    "fc": T.NEXTN_EH_PROJ,
    "pre_fc_norm_embedding": T.NEXTN_ENORM,
    "pre_fc_norm_hidden": T.NEXTN_HNORM,
    "norm": T.NEXTN_SHARED_HEAD_NORM,
}
# What an --mtp-only file keeps of the trunk (the head drafts from these), as llama.cpp's does.
MTP_ONLY_KEEP = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")

ATTENTION = (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.ATTN_Q_NORM, T.ATTN_K_NORM)
LINEAR_COMMON = (T.ATTN_QKV, T.ATTN_GATE, T.SSM_CONV1D, T.SSM_A, T.SSM_NORM, T.SSM_OUT)
LINEAR_GATES = {  # beta/alpha projections: separate in Qwen3.5, fused in Qwen3-Next
    gguf.MODEL_ARCH.QWEN35: (T.SSM_BETA, T.SSM_ALPHA),
    gguf.MODEL_ARCH.QWEN35MOE: (T.SSM_BETA, T.SSM_ALPHA),
    gguf.MODEL_ARCH.QWEN3NEXT: (T.SSM_BETA_ALPHA,),
}
LINEAR_KINDS = frozenset({*LINEAR_COMMON, T.SSM_DT, T.SSM_BETA, T.SSM_ALPHA, T.SSM_BETA_ALPHA})
DENSE_FFN = (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN)
MOE_FFN = (T.FFN_GATE_INP, T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP)
SHARED_FFN = (T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP, T.FFN_DOWN_SHEXP, T.FFN_GATE_INP_SHEXP)
NEXTN = (T.NEXTN_EH_PROJ, T.NEXTN_ENORM, T.NEXTN_HNORM)
# RMSNorms applied as x̂·(1 + w) (Qwen3_5RMSNorm, Qwen3NextRMSNorm), stored as 1 + w; the gated
# norm inside linear attention (ssm_norm) is a plain weight.
ZERO_CENTRED = frozenset(
    {
        T.ATTN_NORM,
        T.ATTN_POST_NORM,
        T.OUTPUT_NORM,
        T.ATTN_Q_NORM,
        T.ATTN_K_NORM,
        T.NEXTN_ENORM,
        T.NEXTN_HNORM,
        T.NEXTN_SHARED_HEAD_NORM,
    }
)


def _hybrid(hp: HParams) -> Hybrid:
    assert hp.hybrid is not None, "a hybrid family's HParams carry .hybrid"
    return hp.hybrid


def canonical(name: str) -> str:
    """One spelling for the text model's tensors, whichever class saved them."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.mtp."):
        return name.removeprefix("model.")
    return name


def prepare(hp: HParams, refs: dict[str, TensorRef], mtp: MtpMode) -> HParams:
    """Count the checkpoint's MTP layers against config.json and apply the MTP choice.

    Raises:
        CheckpointError: MTP layers declared but absent (or the other way round), or
            ``--mtp-only`` on a checkpoint without a head.
    """
    hy = _hybrid(hp)
    names = [canonical(n) for n in refs]
    layers = {int(m.group(1)) for n in names if (m := MTP_LAYER.match(n))}
    found = max(layers) + 1 if layers else 0
    if sorted(layers) != list(range(found)):
        raise CheckpointError(
            f"checkpoint has MTP layers {sorted(layers)}; some are missing, it is incomplete"
        )
    declared = hy.n_mtp_declared
    if mtp != "drop" and declared and found != declared:
        raise CheckpointError(
            f"config.json declares mtp_num_hidden_layers={declared} but the checkpoint holds "
            f"{found} mtp.layers.*; download the complete checkpoint, or convert without the "
            "MTP head (--no-mtp)"
        )
    if mtp == "only" and not found:
        raise CheckpointError(
            "--mtp-only: the checkpoint has no mtp.* tensors, so there is no MTP head to write; "
            "convert without --mtp-only"
        )
    return replace(hp, hybrid=replace(hy, n_mtp=0 if mtp == "drop" else found, mtp_only=mtp == "only"))


def _selected(refs: dict[str, TensorRef], mtp: MtpMode) -> dict[str, TensorRef]:
    out: dict[str, TensorRef] = {}
    for name, ref in refs.items():
        c = canonical(name)
        if IGNORED.match(c) or (mtp == "drop" and c.startswith("mtp.")):
            continue
        if mtp == "only" and not c.startswith("mtp.") and c not in MTP_ONLY_KEEP:
            continue
        out[c] = ref
    return out


def name_tensors(refs: dict[str, TensorRef], hp: HParams, mtp: MtpMode) -> list[Named]:
    hy = _hybrid(hp)
    name_map = gguf.TensorNameMap(hp.arch.gguf_arch, hp.n_block)
    allowed = set(gguf.MODEL_TENSORS[hp.arch.gguf_arch]) | set(MTP_GLOBALS.values())
    named: list[Named] = []
    for hf_name, sources in group_experts(_selected(refs, mtp), hp, EXPERT).items():
        if hp.tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = _trunk_name(hf_name, hp)
        if name.endswith((".in_proj_qkvz.weight", ".experts.gate_up_proj", ".experts.gate_up_proj.weight")):
            named += _split(hf_name, name, sources[0], hp)
            continue
        if name.endswith(".experts.down_proj"):  # fused experts are saved without .weight
            name += ".weight"
        kind, gname = _mapped(hf_name, name, name_map, allowed, hp)
        shape = stacked_shape(sources)
        check_shape(hf_name, shape, _expected(kind, hf_name, hp))
        _check_layer_kind(hf_name, kind, gname, hy, hp)
        out: list[Source] = list(sources)
        if len(sources) == 1:
            view = _transform(kind, hf_name, sources[0], hp)
            out, shape = [view], tuple(view.shape)
        named.append(Named(hf_name, kind, gname, shape, out))
    return named


def _trunk_name(hf_name: str, hp: HParams) -> str:
    """``mtp.layers.i.x`` as the layer after the trunk (``model.layers.{n_layer + i}.x``)."""
    m = MTP_LAYER.match(hf_name)
    return f"model.layers.{hp.n_layer + int(m.group(1))}.{m.group(2)}" if m else hf_name


def _mapped(
    hf_name: str, name: str, name_map: gguf.TensorNameMap, allowed: set[gguf.MODEL_TENSOR], hp: HParams
) -> tuple[gguf.MODEL_TENSOR, str]:
    parts = name.split(".")
    if parts[0] == "mtp" and len(parts) == 3 and parts[1] in MTP_GLOBALS:
        kind = MTP_GLOBALS[parts[1]]
        return kind, gguf_name(kind, hp.n_layer, "." + parts[2])
    if name.endswith(".linear_attn.dt_bias"):
        name = name.removesuffix("dt_bias") + "dt_proj.bias"
    mapped = name_map.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None or mapped[0] not in allowed:
        raise no_place(hf_name, hp)
    return mapped


def _expected(kind: gguf.MODEL_TENSOR, hf_name: str, hp: HParams) -> tuple[int, ...] | None:
    """The checkpoint (row-major) shape config.json implies, before any transform."""
    la = _hybrid(hp).linear
    d, v = hp.n_embd, la.n_v_heads
    shapes: dict[gguf.MODEL_TENSOR, tuple[int, ...]] = {
        T.ATTN_Q: (2 * hp.n_head * hp.head_dim, d),  # query and its output gate, per head
        T.ATTN_POST_NORM: (d,),
        T.ATTN_QKV: (la.conv_channels, d),
        T.ATTN_GATE: (la.v_channels, d),
        T.SSM_BETA: (v, d),
        T.SSM_ALPHA: (v, d),
        T.SSM_BETA_ALPHA: (2 * v, d),
        T.SSM_CONV1D: (la.conv_channels, 1, la.conv_kernel),
        T.SSM_DT: (v,),
        T.SSM_A: (v,),
        T.SSM_NORM: (la.value_dim,),
        T.SSM_OUT: (d, la.v_channels),
        T.NEXTN_EH_PROJ: (d, 2 * d),
        T.NEXTN_ENORM: (d,),
        T.NEXTN_HNORM: (d,),
        T.NEXTN_SHARED_HEAD_NORM: (d,),
    }
    return shapes[kind] if kind in shapes else expected_shape(kind, hp, bias=hf_name.endswith(".bias"))


def _check_layer_kind(hf_name: str, kind: gguf.MODEL_TENSOR, gname: str, hy: Hybrid, hp: HParams) -> None:
    """A linear-attention tensor only in a layer ``layer_types`` calls linear, attention only in
    full-attention layers (the MTP block is full attention)."""
    m = re.match(r"^blk\.(\d+)\.", gname)
    if m is None or kind not in (*ATTENTION, *LINEAR_KINDS):
        return
    bid = int(m.group(1))
    says = "linear_attention" if hy.recurrent(bid) else "full_attention"
    if (kind in LINEAR_KINDS) != hy.recurrent(bid):
        where = f"layer {bid}" if bid < hp.n_layer else f"MTP layer {bid - hp.n_layer}"
        raise CheckpointError(
            f"{hf_name}: {where} is {says!r} by config.json's layer_types, but the checkpoint holds "
            "the other kind of attention there; layer_types and the weights disagree — fix layer_types"
        )


def _transform(kind: gguf.MODEL_TENSOR, hf_name: str, ref: TensorRef, hp: HParams) -> Source:
    """``ref`` as llama.cpp stores it (see the module docstring)."""
    la = _hybrid(hp).linear
    tiled = hp.arch.gguf_arch != gguf.MODEL_ARCH.QWEN3NEXT and la.n_k_heads != la.n_v_heads
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    shape = ref.shape
    if tiled and kind in (T.ATTN_QKV, T.SSM_CONV1D):
        rows = np.concatenate([np.arange(la.qk_channels), la.qk_channels + _heads(la, la.value_dim)])
    elif tiled and kind == T.ATTN_GATE:
        rows = _heads(la, la.value_dim)
    elif tiled and kind in (T.SSM_BETA, T.SSM_ALPHA, T.SSM_A, T.SSM_DT):
        rows = _heads(la, 1)
    elif tiled and kind == T.SSM_OUT:
        cols = _heads(la, la.value_dim)
    if kind == T.SSM_CONV1D:
        shape = (ref.shape[0], ref.shape[2])
    fn = None
    if kind == T.SSM_A:
        fn = _minus_exp
    elif kind in ZERO_CENTRED:
        fn = _plus_one
    if rows is None and cols is None and fn is None and shape == ref.shape:
        return ref
    return TensorView(ref, shape, rows=rows, cols=cols, fn=fn)


def _heads(la: LinearAttention, width: int) -> np.ndarray:
    return regroup(la.n_k_heads, la.v_per_k, width)


def _plus_one(x: np.ndarray) -> np.ndarray:
    return x + np.float32(1.0)


def _minus_exp(x: np.ndarray) -> np.ndarray:
    return -np.exp(x)


def _split(hf_name: str, name: str, ref: TensorRef, hp: HParams) -> list[Named]:
    """A fused checkpoint tensor as the two GGUF tensors llama.cpp reads."""
    bid = int(m.group(1)) if (m := LAYER.match(name)) else None
    if name.endswith(".in_proj_qkvz.weight"):
        return _split_qkvz(hf_name, ref, hp, bid)
    return _split_gate_up(hf_name, ref, hp, bid)


def _split_qkvz(hf_name: str, ref: TensorRef, hp: HParams, bid: int | None) -> list[Named]:
    """Qwen3-Next's ``in_proj_qkvz``: per key head ``[q, k, v, z]`` -> ``attn_qkv`` (all q, all k,
    all v) and ``attn_gate`` (all z)."""
    la, hy = _hybrid(hp).linear, _hybrid(hp)
    per_v = la.v_per_k * la.value_dim
    group = 2 * la.key_dim + 2 * per_v
    check_shape(hf_name, ref.shape, (la.n_k_heads * group, hp.n_embd))
    _check_layer_kind(hf_name, T.ATTN_QKV, gguf_name(T.ATTN_QKV, bid), hy, hp)
    starts = np.arange(la.n_k_heads)[:, None] * group

    def part(offset: int, width: int) -> np.ndarray:
        return (starts + offset + np.arange(width)[None, :]).reshape(-1)

    k_dim = la.key_dim
    qkv = np.concatenate([part(0, k_dim), part(k_dim, k_dim), part(2 * k_dim, per_v)])
    z = part(2 * k_dim + per_v, per_v)
    return [
        Named(
            hf_name,
            T.ATTN_QKV,
            gguf_name(T.ATTN_QKV, bid),
            (len(qkv), hp.n_embd),
            [TensorView(ref, (len(qkv), hp.n_embd), rows=qkv)],
        ),
        Named(
            hf_name,
            T.ATTN_GATE,
            gguf_name(T.ATTN_GATE, bid),
            (len(z), hp.n_embd),
            [TensorView(ref, (len(z), hp.n_embd), rows=z)],
        ),
    ]


def _split_gate_up(hf_name: str, ref: TensorRef, hp: HParams, bid: int | None) -> list[Named]:
    """Fused experts ``gate_up_proj (E, 2F, D)`` -> ``ffn_gate_exps`` and ``ffn_up_exps`` (E, F, D)."""
    e, f = hp.n_expert, hp.n_ff_exp
    check_shape(hf_name, ref.shape, (e, 2 * f, hp.n_embd))
    rows = (np.arange(e)[:, None] * 2 * f + np.arange(f)[None, :]).reshape(-1)
    out: list[Named] = []
    for kind, offset in ((T.FFN_GATE_EXP, 0), (T.FFN_UP_EXP, f)):
        shape = (e, f, hp.n_embd)
        out.append(
            Named(hf_name, kind, gguf_name(kind, bid), shape, [TensorView(ref, shape, rows=rows + offset)])
        )
    return out


def check_complete(names: set[str], hp: HParams, mtp: MtpMode) -> None:
    """Every tensor each layer's kind needs: linear-attention or attention tensors by
    ``layer_types``, the MLP or experts, and the MTP block's own."""
    hy = _hybrid(hp)
    require(names, gguf_name(T.TOKEN_EMBD))
    require(names, gguf_name(T.OUTPUT_NORM))
    if not hp.tied:
        require(names, gguf_name(T.OUTPUT))
    ffn = (*MOE_FFN, *(SHARED_FFN if hp.n_ff_shexp else ())) if hp.arch.moe else DENSE_FFN
    trunk = () if hy.mtp_only else range(hp.n_layer)
    for bid in trunk:
        kinds = (*LINEAR_COMMON, *LINEAR_GATES[hp.arch.gguf_arch]) if hy.recurrent(bid) else ATTENTION
        for kind in (T.ATTN_NORM, T.ATTN_POST_NORM, *kinds, *ffn):
            require(names, gguf_name(kind, bid, "" if kind == T.SSM_A else ".weight"))
        if hy.recurrent(bid):
            require(names, gguf_name(T.SSM_DT, bid, ".bias"))
    for bid in range(hp.n_layer, hp.n_block):
        for kind in (T.ATTN_NORM, T.ATTN_POST_NORM, *ATTENTION, *ffn, *NEXTN):
            require(names, gguf_name(kind, bid))


def add_metadata(writer: gguf.GGUFWriter, hp: HParams) -> None:
    """The Gated DeltaNet shape, which layers are recurrent, the rotary width and the MTP head
    (llama.cpp's keys; ``attention.recurrent_layers`` has no writer helper in this gguf-py)."""
    hy = _hybrid(hp)
    la = hy.linear
    writer.add_ssm_conv_kernel(la.conv_kernel)
    writer.add_ssm_state_size(la.key_dim)
    writer.add_ssm_group_count(la.n_k_heads)
    writer.add_ssm_time_step_rank(la.n_v_heads)
    writer.add_ssm_inner_size(la.v_channels)
    recurrent = [hy.recurrent(i) for i in range(hp.n_layer)] + [False] * hy.n_mtp
    writer.add_array(RECURRENT_LAYERS.format(arch=writer.arch), recurrent)
    writer.add_full_attention_interval(hy.full_attention_interval)
    writer.add_rope_dimension_count(hy.rope_dims)
    if hy.n_mtp:
        writer.add_nextn_predict_layers(hy.n_mtp)

