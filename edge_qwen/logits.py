"""llama.cpp's logits for every position of a token sequence.

This is the measuring instrument of the project: the converter's correctness tests compare it to an
independent numpy forward pass, and the quality report compares a quantized GGUF to its F16 parent
(KL divergence, top-1 agreement). It therefore favours exactness over speed: F32 KV cache, no flash
attention, CPU only unless asked otherwise, and every position's logits kept.

>>> logits = token_logits("model.gguf", [9707, 11, 1879])    # doctest: +SKIP
>>> logits.shape                                              # doctest: +SKIP
(3, 151936)
>>> tuned = token_logits("model.gguf", ids, adapters=[("sql-lora-f32.gguf", 1.0)])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from edge_qwen._llama import LogCapture, capture_log, physical_cores
from edge_qwen.adapters import apply_adapters, free_adapter, load_adapter
from edge_qwen.errors import ContextOverflowError, ModelLoadError
from edge_qwen.gguf_header import check_gguf_file

DEFAULT_BATCH = 512
_GGML_TYPE_F32 = 0

__all__ = ["fill_batch", "loaded_model", "measuring_context", "token_batch", "token_logits", "tokenize"]


def _log_tail(log: LogCapture) -> str:
    return f" (llama.cpp: {log.tail()})" if log.errors else ""


@contextlib.contextmanager
def loaded_model(
    path: Path,
    log: LogCapture,
    *,
    vocab_only: bool = False,
    n_gpu_layers: int = 0,
    extra_buffers: bool = False,
) -> Iterator[llama_cpp.llama_model_p]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = n_gpu_layers
    # A measurement uses the plain kernels unless asked: no weight repacking into "extra" buffer
    # types (see edge_qwen._llama.default_extra_buffers for why they are also unsafe on some AMX builds).
    params.use_extra_bufts = extra_buffers
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise ModelLoadError(
            f"llama.cpp could not load {path}{_log_tail(log)}; check that the file is complete "
            "and that this llama-cpp-python build supports its architecture and tensor types"
        )
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


@contextlib.contextmanager
def measuring_context(
    model: llama_cpp.llama_model_p,
    log: LogCapture,
    *,
    n_ctx: int,
    n_batch: int,
    threads: int,
    cb_eval: Any = None,
) -> Iterator[llama_cpp.llama_context_p]:
    """An exact context (F32 KV, no flash attention). ``cb_eval``: a
    ``ggml_backend_sched_eval_callback`` that sees the graph's tensors as they are computed."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = 1
    params.n_outputs_max = 0  # = n_batch: every position of a batch produces logits
    params.n_outputs_max_per_seq = 0
    params.n_threads = threads
    params.n_threads_batch = threads
    params.type_k = _GGML_TYPE_F32  # measurement, not speed: keep the KV cache exact
    params.type_v = _GGML_TYPE_F32
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.no_perf = True
    if cb_eval is not None:
        params.cb_eval = cb_eval
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise ModelLoadError(
            f"llama.cpp could not create a context of {n_ctx} tokens{_log_tail(log)}; "
            "try a smaller n_ctx or free some memory"
        )
    try:
        yield ctx
    finally:
        llama_cpp.llama_free(ctx)


@contextlib.contextmanager
def token_batch(capacity: int) -> Iterator[llama_cpp.llama_batch]:
    batch = llama_cpp.llama_batch_init(capacity, 0, 1)
    try:
        yield batch
    finally:
        llama_cpp.llama_batch_free(batch)


def fill_batch(
    batch: llama_cpp.llama_batch, tokens: Sequence[int], start: int, every_logit: bool = True
) -> None:
    """Put ``tokens`` (positions start, start+1, …) in sequence 0, asking for every position's
    logits (only the last one's with ``every_logit=False``)."""
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = start + i  # type: ignore[call-overload]  # llama_pos stub quirk
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if every_logit or i == len(tokens) - 1 else 0


def _check_tokens(tokens: Sequence[int], n_vocab: int) -> None:
    if len(tokens) == 0:
        raise ValueError("token_logits needs at least one token")
    bad = [t for t in tokens if not 0 <= int(t) < n_vocab]
    if bad:
        raise ValueError(
            f"token ids {bad[:5]} are outside this model's vocabulary [0, {n_vocab}); "
            "tokenize with the tokenizer of the same model"
        )


def _default_threads() -> int:
    return physical_cores()


def token_logits(
    gguf_path: str | os.PathLike[str],
    tokens: Sequence[int],
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    n_batch: int = DEFAULT_BATCH,
    n_gpu_layers: int = 0,
    adapters: Sequence[tuple[str | os.PathLike[str], float]] = (),
    extra_buffers: bool = False,
) -> np.ndarray:
    """Logits llama.cpp computes at every position of ``tokens``: float32 ``[len(tokens), n_vocab]``.

    Row ``i`` is the next-token distribution after ``tokens[: i + 1]``. Tokens are decoded in
    batches of ``n_batch`` into one fresh context (default size: just large enough), which is freed
    together with the model before returning, also on error. ``adapters`` are GGUF LoRA files with
    their scales, applied to that context (see :mod:`edge_qwen.adapters`). ``extra_buffers=True``
    lets llama.cpp repack weights as the runtime does (other kernels, other rounding): a second
    valid evaluation to compare with, not the reference.
    """
    path = check_gguf_file(gguf_path)
    n_tokens = len(tokens)
    if n_ctx is not None and n_ctx < n_tokens:
        raise ContextOverflowError(n_tokens, n_ctx)
    n_batch = max(1, min(n_batch, n_tokens or 1))
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(capture_log())
        model = stack.enter_context(
            loaded_model(path, log, n_gpu_layers=n_gpu_layers, extra_buffers=extra_buffers)
        )
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        _check_tokens(tokens, n_vocab)
        loaded = []
        for adapter_path, scale in adapters:
            adapter = load_adapter(model, adapter_path)
            stack.callback(free_adapter, adapter)  # runs after the context is freed, before the model
            loaded.append((adapter, scale))
        ctx = stack.enter_context(
            measuring_context(
                model,
                log,
                n_ctx=n_ctx or n_tokens,
                n_batch=n_batch,
                threads=threads or _default_threads(),
            )
        )
        if loaded:
            apply_adapters(ctx, loaded)
        batch = stack.enter_context(token_batch(n_batch))
        out = np.empty((n_tokens, n_vocab), dtype=np.float32)
        for start in range(0, n_tokens, n_batch):
            chunk = [int(t) for t in tokens[start : start + n_batch]]
            fill_batch(batch, chunk, start)
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise ModelLoadError(
                    f"llama_decode failed with status {status} at tokens {start}..{start + len(chunk)}"
                    f"{_log_tail(log)}; try a larger n_ctx or a smaller n_batch"
                )
            rows = llama_cpp.llama_get_logits(ctx)
            out[start : start + len(chunk)] = np.ctypeslib.as_array(rows, shape=(len(chunk), n_vocab))
        return out


def tokenize(
    gguf_path: str | os.PathLike[str],
    text: str,
    *,
    add_special: bool = False,
    parse_special: bool = False,
) -> list[int]:
    """Token ids of ``text`` with the GGUF's own tokenizer (loads the vocabulary only, not the weights).

    ``parse_special=True`` turns markers such as ``<|im_start|>`` into their single special ids,
    which is what a rendered chat prompt needs.
    """
    path = check_gguf_file(gguf_path)
    data = text.encode("utf-8")
    with capture_log() as log, loaded_model(path, log, vocab_only=True) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # cannot happen with one token per byte plus room for BOS/EOS, but be exact
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            raise ModelLoadError(f"llama.cpp failed to tokenize {len(data)} bytes{_log_tail(log)}")
        return list(buf[:n])
