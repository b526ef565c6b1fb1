"""A tiny but loadable Qwen2 GGUF (written with gguf-py's writer) and a seeded mutator of it.

The model is 1 block, hidden 64, a 260-token byte-level BPE vocabulary: ~150 KB, which llama.cpp
loads in milliseconds. :func:`header_fields` walks the pristine file independently of
``edge_qwen.gguf_header`` to find where each count, length, type, shape and offset lives, so
mutations hit the structures a corrupt download or a buggy writer would break.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER = 64, 128, 4, 2, 1
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: one printable character per byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_qwen2(
    path: Path, seed: int = 0, *, n_embd: int = N_EMBD, n_ff: int = N_FF, n_layer: int = N_LAYER,
    n_head: int = N_HEAD, n_head_kv: int = N_HEAD_KV, dtype: type = np.float32, n_vocab: int = 0,
) -> Path:  # fmt: skip
    """Write the tiny model to ``path``: token_embd in Q8_0 (blocks of 32), everything else F32
    (or ``dtype`` for the matrices: float16 makes a file llama.cpp's quantizer takes as F16).
    ``n_vocab`` above the 263 real tokens pads the vocabulary with filler tokens BPE never makes
    (a real Qwen's 151,936 rows: the embedding, output and logits sizes of the real thing)."""
    rng = np.random.default_rng(seed)
    words = _byte_tokens() + ["Ġt", "he"]  # two merges' results
    filler = [f"<filler_{i}>" for i in range(max(0, n_vocab - len(words) - len(SPECIALS)))]
    tokens = words + filler + SPECIALS
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype is np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * (n_vocab - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "h e"])
    w.add_eos_token_id(n_vocab - 1)
    w.add_bos_token_id(n_vocab - 3)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def f32(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def mat(*shape: int) -> np.ndarray:
        return f32(*shape).astype(dtype)

    embd = gguf.quants.quantize(f32(n_vocab, n_embd), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", embd, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    head_dim = n_embd // n_head
    kv = head_dim * n_head_kv
    for i in range(n_layer):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"{b}.attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(f"{b}.attn_q.bias", f32(n_embd))
        w.add_tensor(f"{b}.attn_k.weight", mat(kv, n_embd))
        w.add_tensor(f"{b}.attn_k.bias", f32(kv))
        w.add_tensor(f"{b}.attn_v.weight", mat(kv, n_embd))
        w.add_tensor(f"{b}.attn_v.bias", f32(kv))
        w.add_tensor(f"{b}.attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(f"{b}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"{b}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"{b}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"{b}.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- where things are -------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    kind: str  # count, key_len, vtype, etype, arr_count, str_len, scalar, n_dims, dim, ttype, toffset
    offset: int
    size: int


_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def header_fields(data: bytes) -> tuple[list[Field], int]:
    """Every structural field of a (valid) GGUF, and the offset where tensor data starts."""
    fields = [Field("version", 4, 4), Field("count", 8, 8), Field("count", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24
    align = gguf.GGUF_DEFAULT_ALIGNMENT

    def string(kind: str) -> tuple[str, int]:
        nonlocal pos
        n = struct.unpack_from("<Q", data, pos)[0]
        fields.append(Field(kind, pos, 8))
        text = data[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        return text, n

    for _ in range(n_kv):
        key, _ = string("key_len")
        vtype = struct.unpack_from("<I", data, pos)[0]
        fields.append(Field("vtype", pos, 4))
        pos += 4
        if vtype == gguf.GGUFValueType.STRING:
            string("str_len")
        elif vtype == gguf.GGUFValueType.ARRAY:
            etype, count = struct.unpack_from("<IQ", data, pos)
            fields += [Field("etype", pos, 4), Field("arr_count", pos + 4, 8)]
            pos += 12
            for i in range(count):
                if etype == gguf.GGUFValueType.STRING:
                    string("str_len" if i < 8 else "_")
                else:
                    pos += _SIZES[etype]
        else:
            if key == gguf.Keys.General.ALIGNMENT:
                align = struct.unpack_from("<I", data, pos)[0]
            fields.append(Field("scalar", pos, _SIZES[vtype]))
            pos += _SIZES[vtype]
    for _ in range(n_tensors):
        string("tname_len")
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append(Field("n_dims", pos, 4))
        pos += 4
        for _ in range(n_dims):
            fields.append(Field("dim", pos, 8))
            pos += 8
        fields += [Field("ttype", pos, 4), Field("toffset", pos + 4, 8)]
        pos += 12
    fields = [f for f in fields if f.kind != "_"]
    return fields, -(-pos // align) * align


# --- mutations --------------------------------------------------------------------------------

_HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**62, 2**40, 2**32, 2**32 - 1, 2**31]


def _put(buf: bytearray, f: Field, value: int) -> None:
    buf[f.offset : f.offset + f.size] = (value % (1 << (8 * f.size))).to_bytes(f.size, "little")


def _get(buf: bytes, f: Field) -> int:
    return int.from_bytes(buf[f.offset : f.offset + f.size], "little")


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of ``data``: (description, mutated bytes). Descriptions starting with
    ``data:`` change only tensor *values* (the one kind llama.cpp may load without complaint even
    when the numbers are garbage)."""
    fields, data_start = header_fields(data)
    buf = bytearray(data)
    choice = rng.choice(
        [
            "truncate",
            "bitflip",
            "huge",
            "offby",
            "vtype",
            "dims",
            "ttype",
            "toffset",
            "data",
            "append",
            "zero",
            "version",
        ]
    )
    if choice == "truncate":
        cut = rng.choice(
            [rng.randrange(len(data)), rng.randrange(data_start), len(data) - rng.randrange(1, 64)]
        )
        return f"truncate at {cut}", bytes(buf[:cut])
    if choice == "bitflip":
        f = rng.choice(fields)
        bit = rng.randrange(8 * f.size)
        buf[f.offset + bit // 8] ^= 1 << (bit % 8)
        return f"bitflip {f.kind}@{f.offset} bit {bit}", bytes(buf)
    if choice in ("huge", "offby"):
        f = rng.choice([f for f in fields if f.size == 8])
        value = (
            rng.choice(_HUGE) if choice == "huge" else _get(buf, f) + rng.choice([-2, -1, 1, 2, 7, 64, 4096])
        )
        _put(buf, f, value)
        return f"{choice} {f.kind}@{f.offset} = {value}", bytes(buf)
    if choice == "vtype":
        f = rng.choice([f for f in fields if f.kind in ("vtype", "etype")])
        value = rng.choice([9, 13, 14, 255, 2**31, rng.randrange(13)])
        _put(buf, f, value)
        return f"vtype {f.kind}@{f.offset} = {value}", bytes(buf)
    if choice == "dims":
        f = rng.choice([f for f in fields if f.kind in ("n_dims", "dim")])
        value = (
            rng.choice([0, 1, 3, 5, 8, 33, 2**31, 2**63 + 5])
            if f.kind == "n_dims"
            else rng.choice([0, 1, 31, 33, 65, 2**31, 2**33, 2**62, 2**63 + 1, _get(buf, f) * 2])
        )
        _put(buf, f, value)
        return f"dims {f.kind}@{f.offset} = {value}", bytes(buf)
    if choice == "ttype":
        f = rng.choice([f for f in fields if f.kind == "ttype"])
        value = rng.choice([4, 5, 40, 41, 1000, 2**31, *range(0, 32)])
        _put(buf, f, value)
        return f"ttype @{f.offset} = {value}", bytes(buf)
    if choice == "toffset":
        f = rng.choice([f for f in fields if f.kind == "toffset"])
        value = rng.choice([_get(buf, f) + d for d in (-32, -1, 1, 16, 32, 4096)] + [2**40, 2**64 - 32])
        _put(buf, f, value)
        return f"toffset @{f.offset} = {value}", bytes(buf)
    if choice == "data":
        for _ in range(rng.randrange(1, 16)):
            buf[rng.randrange(data_start, len(buf))] = rng.randrange(256)
        return "data: random bytes in tensor data", bytes(buf)
    if choice == "append":
        return "append garbage", bytes(buf) + rng.randbytes(rng.randrange(1, 100))
    if choice == "zero":
        start = rng.randrange(data_start)
        n = rng.randrange(1, 64)
        buf[start : start + n] = bytes(len(buf[start : start + n]))
        return f"zero {n} bytes at {start}", bytes(buf)
    f = fields[0]
    value = rng.choice([0, 1, 2, 4, 0x03000000, 2**32 - 1])
    _put(buf, f, value)
    return f"version = {value}", bytes(buf)
