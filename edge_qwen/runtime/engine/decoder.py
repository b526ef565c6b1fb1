"""The native side of the step loop: one llama.cpp context, a multi-sequence batch, logits rows.

:class:`NativeDecoder` implements :class:`~edge_qwen.runtime.engine.batcher.Decoder` over the raw
bindings. It is used from the compute thread only.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from ... import _llama
from ...adapters import Adapter, apply_adapters
from ..request import AdapterSet
from .batcher import BatchEntry
from .threads import ThreadGovernor


class NativeDecoder:
    """Batches of several sequences on one context; greedy rows are sampled with a numpy argmax.
    An entry with a speculative draft gets logits rows at each drafted position too.

    Why the argmax path: ``llama_sampler_sample`` copies all ~152k logits into a candidate array
    every token (~0.5 ms, a few % of a small model's decode step); numpy's argmax over the logits
    row in place costs a tenth of that and picks the same token as llama.cpp's greedy sampler
    (the first maximum).
    """

    def __init__(self, ctx: Any, vocab: Any, n_batch: int, governor: ThreadGovernor | None = None) -> None:
        self.ctx = ctx
        self.governor = governor
        self.adapters: dict[str, Adapter] = {}  # loaded LoRA adapters by name (the Model's)
        self._applied: AdapterSet = ()
        self.n_threads = int(L.llama_n_threads(ctx))
        self.vocab = vocab
        self.memory = L.llama_get_memory(ctx)
        model = L.llama_get_model(ctx)
        self.recurrent = bool(L.llama_model_is_recurrent(model) or L.llama_model_is_hybrid(model))
        self.rollback_window = int(L.llama_n_rs_seq(ctx)) if self.recurrent else 0
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.capacity = n_batch
        self.raw = L.llama_batch_init(n_batch, 0, 1)
        raw = self.raw
        self._token = np.ctypeslib.as_array(raw.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(raw.pos, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(raw.logits, shape=(n_batch,))
        self._seq = [raw.seq_id[i] for i in range(n_batch)]
        for i in range(n_batch):
            raw.n_seq_id[i] = 1
        self._logits[:] = 0

    def decode(self, entries: Sequence[BatchEntry]) -> int:
        n = 0
        logits = self._logits
        for entry in entries:
            k = len(entry.tokens)
            self._token[n : n + k] = entry.tokens
            self._pos[n : n + k] = np.arange(entry.pos, entry.pos + k)
            seq = entry.seq_id
            for i in range(n, n + k):
                self._seq[i][0] = seq
            logits[n : n + k] = 0
            n += k
            if entry.logits:
                first = n - 1 - len(entry.draft)  # logits at every drafted position, and before them
                logits[first:n] = 1
                entry.rows = list(range(first, n))
                entry.row = n - 1
        self.raw.n_tokens = n
        if self.governor is not None:
            self._follow_governor()
        return int(L.llama_decode(self.ctx, self.raw))

    def _follow_governor(self) -> None:
        """Use the cores other processes leave free (a desktop app shares the CPU); one comparison
        per step between the governor's readings."""
        assert self.governor is not None
        n = self.governor.threads(time.monotonic())
        if n != self.n_threads:
            L.llama_set_n_threads(self.ctx, n, n)
            self.n_threads = n

    def sample(self, sampler: Any, row: int) -> int:
        if sampler is not None:
            return int(L.llama_sampler_sample(sampler, self.ctx, row))
        return int(self.logits(row).argmax())

    def top(self, row: int) -> tuple[int, float]:
        """The most likely token at a logits row and its probability (a draft model's confidence)."""
        logits = self.logits(row)
        token = int(logits.argmax())
        return token, 1.0 / float(np.exp(logits - logits[token]).sum())

    def logits(self, row: int) -> np.ndarray:
        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))

    def seq_embedding(self, seq_id: int) -> tuple[float, ...] | None:
        """The pooled output of a sequence after its last prompt token: its embedding (last-token
        pooling) or its rank scores (rank pooling); None when the context does not pool."""
        pooling = int(L.llama_pooling_type(self.ctx))
        model = L.llama_get_model(self.ctx)
        if pooling == L.LLAMA_POOLING_TYPE_RANK:
            n = int(L.llama_model_n_cls_out(model))
        elif pooling == L.LLAMA_POOLING_TYPE_LAST:
            n = int(L.llama_model_n_embd(model))
        else:
            return None
        ptr = L.llama_get_embeddings_seq(self.ctx, seq_id)
        return tuple(float(x) for x in np.ctypeslib.as_array(ptr, shape=(n,))) if ptr else None

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def seq_rm(self, seq_id: int, p0: int) -> bool:
        return bool(L.llama_memory_seq_rm(self.memory, seq_id, p0, -1))

    def seq_cp(self, src: int, dst: int, n_tokens: int) -> None:
        L.llama_memory_seq_cp(self.memory, src, dst, 0, n_tokens)

    def seq_state(self, seq_id: int) -> bytes | None:
        """A copy of the sequence's cells (its K/V and positions, and a hybrid's recurrent state)
        for the prompt cache; None when llama.cpp cannot write it."""
        return self._read_state(seq_id, L.LLAMA_STATE_SEQ_FLAGS_NONE)

    def load_state(self, seq_id: int, state: bytes) -> bool:
        """Write a saved sequence state into ``seq_id`` (which must be empty); False when llama.cpp
        refused it (no free cells for it, for one), with the sequence left empty."""
        return self._write_state(seq_id, state, L.LLAMA_STATE_SEQ_FLAGS_NONE)

    def seq_partial_state(self, seq_id: int) -> bytes | None:
        """A hybrid sequence's recurrent state alone (a checkpoint; its K/V stay in the cache)."""
        return self._read_state(seq_id, L.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)

    def load_partial_state(self, seq_id: int, state: bytes) -> bool:
        """Put a checkpoint's recurrent state back into ``seq_id`` (its K/V are left as they are);
        False, with the sequence emptied, when llama.cpp refused it."""
        return self._write_state(seq_id, state, L.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)

    def _read_state(self, seq_id: int, flags: int) -> bytes | None:
        size = int(L.llama_state_seq_get_size_ext(self.ctx, seq_id, flags))
        if size <= 0:
            return None
        buf = (ctypes.c_uint8 * size)()
        written = int(L.llama_state_seq_get_data_ext(self.ctx, buf, size, seq_id, flags))
        return bytes(memoryview(buf)[:written]) if written > 0 else None

    def _write_state(self, seq_id: int, state: bytes, flags: int) -> bool:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if int(L.llama_state_seq_set_data_ext(self.ctx, buf, len(state), seq_id, flags)) > 0:
            return True
        L.llama_memory_seq_rm(self.memory, seq_id, 0, -1)
        return False

    def use_adapters(self, key: AdapterSet) -> None:
        """Apply exactly this adapter set to the context (a no-op when it is already applied)."""
        if key != self._applied:
            apply_adapters(self.ctx, [(self.adapters[name], scale) for name, scale in key])
            self._applied = key

    def last_error(self) -> str:
        return _llama.take_recent_errors()

    def free(self) -> None:
        if self.raw is not None:
            L.llama_batch_free(self.raw)
            self.raw = None
