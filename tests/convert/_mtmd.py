"""Shared by the multimodal converter tests: a converted pair loaded in llama.cpp + mtmd, exact
settings (F32 KV cache, no flash attention, two threads), and the error measure they report."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np

from edge_qwen import _llama
from edge_qwen.mtmd_native import Mtmd


@contextlib.contextmanager
def loaded(gguf_path: str | Path, mmproj: str | Path) -> Iterator[tuple[object, object, Mtmd]]:
    """(model, context with an exact F32 KV cache, Mtmd) for one converted pair."""
    _llama.init_backend()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mp)
    assert model, f"llama.cpp could not load {gguf_path}"
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 1024, 1024, 1024, 1  # an audio chunk is 750
    cp.n_threads = cp.n_threads_batch = 2
    cp.type_k = cp.type_v = 0  # F32
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, cp)
    try:
        with Mtmd(mmproj, model, threads=2) as mtmd:
            yield model, ctx, mtmd
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def decode_all(ctx: object, model: object, tokens: tuple[int, ...], start: int) -> np.ndarray:
    """Logits of every token, decoded at positions start, start+1, … (llama.cpp widens them to M-RoPE)."""
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, start + i, 1, 1
            batch.seq_id[i][0] = 0
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        return np.stack(
            [
                np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                for i in range(len(tokens))
            ]
        )
    finally:
        llama_cpp.llama_batch_free(batch)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def image_embeddings(result: dict, img: np.ndarray) -> np.ndarray:
    """mtmd's embeddings of one image through a converted pair (``convert(...).as_dict()``)."""
    with (
        loaded(result["gguf"], result["mmproj"]["path"]) as (_, _, mtmd),
        mtmd.tokenize(mtmd.marker, [img]) as chunks,
    ):
        (chunk,) = [c for c in chunks if c.kind == "image"]
        return mtmd.encode(chunk)
