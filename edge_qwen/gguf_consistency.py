"""Does a structurally valid GGUF describe a model llama.cpp can build? (Qwen architectures.)

:mod:`edge_qwen.gguf_header` proves the file parses; llama.cpp's model loader then also refuses a
hyper-parameter of the wrong type, a tensor the architecture does not have, a block index past
``block_count``, and a tensor whose shape disagrees with the hyper-parameters. These checks run the
same rules, from gguf-py's tables (``MODEL_TENSORS``, ``TENSOR_NAMES``, ``Keys``), on model files
of the Qwen architectures edge-qwen supports (adapters, projectors and other architectures pass
untouched), so ``info`` never calls a file fine that loading then refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gguf

if TYPE_CHECKING:
    from .gguf_header import GGUFHeader

K = gguf.Keys
VT = gguf.GGUFValueType
T = gguf.MODEL_TENSOR
ARCHS = {
    gguf.MODEL_ARCH_NAMES[a]: a
    for a in (
        gguf.MODEL_ARCH.QWEN2,
        gguf.MODEL_ARCH.QWEN3,
        gguf.MODEL_ARCH.QWEN2MOE,
        gguf.MODEL_ARCH.QWEN3MOE,
    )
}
REQUIRED = (
    K.LLM.CONTEXT_LENGTH,
    K.LLM.EMBEDDING_LENGTH,
    K.LLM.BLOCK_COUNT,
    K.Attention.HEAD_COUNT,
    K.Attention.LAYERNORM_RMS_EPS,
    K.Tokenizer.MODEL,
)
# the exact types llama.cpp reads these keys as; the per-layer ones may also be integer arrays
UINT32_KEYS = (
    K.LLM.CONTEXT_LENGTH,
    K.LLM.EMBEDDING_LENGTH,
    K.LLM.BLOCK_COUNT,
    K.Attention.KEY_LENGTH,
    K.Attention.VALUE_LENGTH,
    K.LLM.EXPERT_COUNT,
    K.LLM.EXPERT_USED_COUNT,
    K.LLM.EXPERT_FEED_FORWARD_LENGTH,
    *(v for k, v in vars(K.Tokenizer).items() if k.endswith("_ID")),
)
PER_LAYER_KEYS = (K.LLM.FEED_FORWARD_LENGTH, K.Attention.HEAD_COUNT, K.Attention.HEAD_COUNT_KV)
TYPED_KEYS: dict[str, VT] = {
    **dict.fromkeys(UINT32_KEYS, VT.UINT32),
    **dict.fromkeys((K.Attention.LAYERNORM_RMS_EPS, K.Rope.FREQ_BASE), VT.FLOAT32),
    **dict.fromkeys((K.Tokenizer.MODEL, K.Tokenizer.PRE, K.Tokenizer.CHAT_TEMPLATE), VT.STRING),
    **dict.fromkeys(
        (
            K.Tokenizer.ADD_BOS,
            K.Tokenizer.ADD_EOS,
            K.Tokenizer.ADD_SEP,
            K.Tokenizer.ADD_PREFIX,
            K.Tokenizer.REMOVE_EXTRA_WS,
        ),
        VT.BOOL,
    ),
}
ARRAY_KEYS: dict[str, VT] = {
    K.Tokenizer.LIST: VT.STRING,
    K.Tokenizer.MERGES: VT.STRING,
    K.Tokenizer.TOKEN_TYPE: VT.INT32,
    K.Tokenizer.SCORES: VT.FLOAT32,
}
_INTS = {VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64}

Dims = dict[str, int]
# weight shape in GGUF order (ne[0] first) from the model's dimensions; kinds not listed are not checked
SHAPES: dict[gguf.MODEL_TENSOR, Callable[[Dims], tuple[int, ...]]] = {
    T.TOKEN_EMBD: lambda d: (d["embd"], d["vocab"]),
    T.OUTPUT: lambda d: (d["embd"], d["vocab"]),
    T.OUTPUT_NORM: lambda d: (d["embd"],),
    T.ATTN_NORM: lambda d: (d["embd"],),
    T.FFN_NORM: lambda d: (d["embd"],),
    T.ATTN_Q: lambda d: (d["embd"], d["head"] * d["k"]),
    T.ATTN_K: lambda d: (d["embd"], d["head_kv"] * d["k"]),
    T.ATTN_V: lambda d: (d["embd"], d["head_kv"] * d["v"]),
    T.ATTN_OUT: lambda d: (d["head"] * d["v"], d["embd"]),
    T.ATTN_Q_NORM: lambda d: (d["k"],),
    T.ATTN_K_NORM: lambda d: (d["k"],),
    T.FFN_GATE: lambda d: (d["embd"], d["ff"]),
    T.FFN_UP: lambda d: (d["embd"], d["ff"]),
    T.FFN_DOWN: lambda d: (d["ff"], d["embd"]),
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (src/llama-hparams.h)
Problem = tuple[str, str, str]  # (field, what is wrong, the key or tensor name it sits at)


def model_problems(header: GGUFHeader) -> list[Problem]:
    """What llama.cpp's loader would refuse in this header (empty: nothing, or not checked)."""
    arch = ARCHS.get(header.architecture)
    file_type = header.metadata.get(K.General.TYPE, gguf.GGUFType.MODEL)
    if arch is None or file_type != gguf.GGUFType.MODEL:
        return []
    problems = _key_problems(header)
    if problems:
        return problems
    return _tensor_problems(header, arch)


def _key_problems(header: GGUFHeader) -> list[Problem]:
    name = header.architecture
    problems = [
        (k.format(arch=name), "is missing", gguf.Keys.General.ARCHITECTURE)
        for k in REQUIRED
        if k.format(arch=name) not in header.value_types
    ]
    tokenizer = header.metadata.get(K.Tokenizer.MODEL)
    needs = [K.Tokenizer.LIST] if tokenizer not in (None, "none", "no_vocab") else []
    needs += [K.Tokenizer.MERGES] if tokenizer == "gpt2" else []  # BPE
    for key in needs:
        if header.value_types.get(key, (None, None))[1] != VT.STRING:
            problems.append((key, f"is missing, and a {tokenizer!r} tokenizer needs it", K.Tokenizer.MODEL))
    for key, (vtype, etype) in header.value_types.items():
        template = key.replace(f"{name}.", "{arch}.", 1) if key.startswith(f"{name}.") else key
        if template in PER_LAYER_KEYS:
            ok = vtype == VT.UINT32 or (vtype == VT.ARRAY and etype in _INTS)
        elif template in TYPED_KEYS:
            ok = vtype == TYPED_KEYS[template]
        elif template in ARRAY_KEYS:
            ok = vtype == VT.ARRAY and etype == ARRAY_KEYS[template]
        else:
            continue
        if not ok:
            shown = VT(vtype).name + (
                f" of {VT(etype).name}" if etype is not None and etype in set(VT) else ""
            )
            problems.append((key, f"has type {shown}, which llama.cpp does not accept for it", key))
    n_tokens = header.array_lengths.get(K.Tokenizer.LIST)
    for key in (K.Tokenizer.TOKEN_TYPE, K.Tokenizer.SCORES):
        if key in header.array_lengths and header.array_lengths[key] != n_tokens:
            problems.append((key, f"has {header.array_lengths[key]} entries for {n_tokens} tokens", key))
    return problems


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list) and value else value or 0)


def _dims(header: GGUFHeader) -> Dims:
    v = header.arch_value
    embd, head = _first(v(K.LLM.EMBEDDING_LENGTH)), _first(v(K.Attention.HEAD_COUNT))
    k = _first(v(K.Attention.KEY_LENGTH)) or (embd // head if head else 0)
    return {
        "embd": embd,
        "head": head,
        "head_kv": _first(v(K.Attention.HEAD_COUNT_KV)) or head,
        "k": k,
        "v": _first(v(K.Attention.VALUE_LENGTH)) or k,
        "ff": _first(v(K.LLM.FEED_FORWARD_LENGTH)),
        "vocab": header.array_lengths.get(K.Tokenizer.LIST, 0),
        "blocks": _first(v(K.LLM.BLOCK_COUNT)),
    }


def _tensor_problems(header: GGUFHeader, arch: gguf.MODEL_ARCH) -> list[Problem]:
    d = _dims(header)
    block_key = K.LLM.BLOCK_COUNT.format(arch=header.architecture)
    if not 0 < d["blocks"] <= MAX_LAYERS:
        return [(block_key, f"{d['blocks']} blocks; llama.cpp allows 1..{MAX_LAYERS}", block_key)]
    kinds = {}
    for k in gguf.MODEL_TENSORS[arch]:
        for bid in range(d["blocks"]) if "{bid}" in gguf.TENSOR_NAMES[k] else [0]:
            kinds[gguf.TENSOR_NAMES[k].format(bid=bid)] = k
    if _first(header.arch_value(K.LLM.POOLING_TYPE)) == gguf.PoolingType.RANK:  # a reranker's head
        kinds[gguf.TENSOR_NAMES[T.CLS_OUT]] = T.CLS_OUT  # llama.cpp loads it on qwen3; gguf-py omits it
    problems: list[Problem] = []
    weights = {t.name: t for t in header.tensors}
    for t in header.tensors:
        base, _, suffix = t.name.rpartition(".")
        kind = kinds.get(base)
        if kind is None or suffix not in ("weight", "bias"):
            m = _BLOCK.match(t.name)
            why = (
                f"block {m.group(1)} is past block_count {d['blocks']}"
                if m and int(m.group(1)) >= d["blocks"]
                else f"is not a tensor of the {header.architecture} architecture"
            )
            problems.append((f"tensor {t.name}", why, t.name))
            continue
        shape_of = SHAPES.get(kind)
        if shape_of is None or (d["vocab"] == 0 and kind in (T.TOKEN_EMBD, T.OUTPUT)):
            continue
        want = shape_of(d)
        if suffix == "bias":
            weight = weights.get(f"{base}.weight")
            want = (weight.shape[1],) if weight is not None and len(weight.shape) > 1 else (want[-1],)
        if tuple(t.shape) != want:
            problems.append(
                (f"shape of {t.name}", f"is {list(t.shape)}, the hyper-parameters need {list(want)}", t.name)
            )
    blocks = {int(m.group(1)) for t in header.tensors if (m := _BLOCK.match(t.name))}
    missing = sorted(set(range(d["blocks"])) - blocks)
    if missing:
        problems.append((block_key, f"is {d['blocks']} but block {missing[0]} has no tensors", block_key))
    return problems
