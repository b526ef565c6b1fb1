"""Drafting with the model's own multi-token-prediction head (Qwen3.5, Qwen3.5-MoE, Qwen3-Next).

Those checkpoints ship one extra decoder block (``nextn`` in GGUF, ``mtp.*`` in the checkpoint)
trained to predict the token after next from two inputs: the next token's embedding and the
trunk's last hidden state (before the output norm) at the current position. llama.cpp runs it as a
second context of type ``LLAMA_CONTEXT_TYPE_MTP`` on the same weights, with its own small K/V cache
(one attention layer) and ``llama_batch_ext`` entries that carry a token and a hidden-state row.

:class:`MtpHead` keeps that context in step with the target, on the compute thread:

* after every target decode (:meth:`observe`) it reads the target's hidden rows
  (``llama_get_embeddings_nextn``: one row per batch token) and feeds the MTP context the pairs
  ``(token at p, hidden state at p - 1)`` for each decoded position, so its K/V mirrors the
  sequence; rows are kept until the next decode of that sequence, since drafting starts from the
  hidden state of the last *accepted* position;
* to draft (:meth:`propose`) it decodes ``(the sequence's newest token, hidden state before it)``,
  takes the argmax, and chains: each drafted token is paired with the MTP block's own hidden state
  at the previous draft position. All drafting sequences go in one MTP decode per drafted position.

The MTP context's cells past a sequence's accepted tokens (drafts, rejected verification tokens)
are removed before anything is fed at those positions, so rejections need no further care. The
target's verification keeps the output exactly the target's (:mod:`.drafting`).

Two llama.cpp calls are staging C++ API (``src/llama-ext.h``: ``llama_set_embeddings_nextn``,
``llama_get_embeddings_nextn[_ith]``), exported under C++ names; :func:`staging` finds them and
fails with a clear error on a build without them.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from ...errors import ConfigError
from .batch_types import BatchEntry, Wanted

_STAGING = {  # name -> (mangled symbol, argtypes, restype)
    "llama_set_embeddings_nextn": (
        "_Z26llama_set_embeddings_nextnP13llama_contextbb",
        [ctypes.c_void_p, ctypes.c_bool, ctypes.c_bool], None,
    ),
    "llama_get_embeddings_nextn": (
        "_Z26llama_get_embeddings_nextnP13llama_context", [ctypes.c_void_p], ctypes.POINTER(ctypes.c_float),
    ),
    "llama_get_embeddings_nextn_ith": (
        "_Z30llama_get_embeddings_nextn_ithP13llama_contexti",
        [ctypes.c_void_p, ctypes.c_int32], ctypes.POINTER(ctypes.c_float),
    ),
}  # fmt: skip


def staging(name: str) -> Any:
    """One of llama.cpp's staging MTP functions, typed.

    Raises:
        ConfigError: this llama.cpp build does not export it.
    """
    symbol, argtypes, restype = _STAGING[name]
    try:
        fn = getattr(L._lib, symbol)
    except AttributeError:
        raise ConfigError(
            f"this llama.cpp build has no {name} (the MTP staging API of llama-cpp-python 0.3.36); "
            "reinstall edge-qwen's pinned llama-cpp-python, or draft with speculative='lookup'"
        ) from None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def check_staging() -> None:
    """Raise :class:`ConfigError` now when this llama.cpp build lacks any of the MTP staging calls."""
    for name in _STAGING:
        staging(name)


class _Rows:
    """A sequence's hidden-state rows from its last target decode: positions ``start …``."""

    def __init__(self, start: int, rows: np.ndarray) -> None:
        self.start, self.rows = start, rows

    def at(self, pos: int) -> np.ndarray | None:
        i = pos - self.start
        return self.rows[i] if 0 <= i < len(self.rows) else None


class MtpHead:
    """The MTP block as a draft source (:class:`~.batch_types.DraftSource`) for up to
    ``parallel`` sequences of the target context ``target_ctx`` (compute thread only)."""

    def __init__(
        self, target_ctx: Any, mtp_ctx: Any, *, n_vocab: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.target, self.ctx = target_ctx, mtp_ctx
        self.memory = L.llama_get_memory(mtp_ctx)
        self.n_vocab = n_vocab
        self.n_embd = int(L.llama_model_n_embd_out(L.llama_get_model(target_ctx)))  # the h_nextn width
        self.n_batch = int(L.llama_n_batch(mtp_ctx))
        self._hidden = staging("llama_get_embeddings_nextn")
        self._hidden_ith = staging("llama_get_embeddings_nextn_ith")
        enable = staging("llama_set_embeddings_nextn")
        enable(target_ctx, True, False)  # every batch token's row, by batch index
        enable(mtp_ctx, True, True)  # the output rows only, by output index
        self.batch = L.llama_batch_ext_init(mtp_ctx)
        self._keep: list[np.ndarray] = []  # rows a batch points into, alive until it is decoded
        self.rows: dict[int, _Rows] = {}
        self.decodes = 0
        self._clock = clock
        self._position_s = 0.0

    @property
    def position_cost(self) -> float:
        """Seconds one drafted position costs (one MTP decode)."""
        return self._position_s

    # -- keeping up with the target --------------------------------------------------------------------

    def observe(self, entries: Seq[BatchEntry]) -> None:
        """The target just decoded ``entries`` (in batch order): feed their positions to the MTP
        context and keep each sequence's rows for drafting."""
        total = sum(len(e.tokens) for e in entries)
        if total == 0:
            return
        ptr = self._hidden(self.target)
        if not ptr:
            return
        hidden = np.ctypeslib.as_array(ptr, shape=(total, self.n_embd))
        self._clear()
        offset = 0
        for entry in entries:
            k, seq_id = len(entry.tokens), entry.seq_id
            rows = hidden[offset : offset + k].copy()
            offset += k
            before = self.rows.get(seq_id)
            first = before.at(entry.pos - 1) if before else None  # the state the first token pairs with
            L.llama_memory_seq_rm(self.memory, seq_id, entry.pos, -1)
            for j, token in enumerate(entry.tokens):
                pos = entry.pos + j
                h = rows[j - 1] if j else first
                if h is not None and pos > 0 and self._room():
                    self._add(seq_id, token, pos, h, output=False)
            # keep the row before the entry too: a rollback to the state saved before this decode
            # refeeds from entry.pos, and its first token pairs with that row
            if first is not None:
                self.rows[seq_id] = _Rows(entry.pos - 1, np.vstack([first, rows]))
            else:
                self.rows[seq_id] = _Rows(entry.pos, rows)
        self._process()

    def prefetch(self, histories: Mapping[int, Seq[int]]) -> None:
        """Nothing to read ahead: :meth:`observe` already fed every decoded position."""

    def forget(self, seq_ids: Iterable[int] | None = None) -> None:
        """Drop the MTP cells and rows of ``seq_ids`` (all: the target's state became unknown)."""
        for seq_id in list(self.rows) if seq_ids is None else list(seq_ids):
            L.llama_memory_seq_rm(self.memory, seq_id, 0, -1)
            self.rows.pop(seq_id, None)

    # -- drafting --------------------------------------------------------------------------------------

    def propose(self, wanted: Mapping[int, Wanted], p_min: Mapping[int, float]) -> dict[int, list[int]]:
        """Drafts for ``{seq_id: (tokens so far, most tokens to draft)}``: the newest token (not yet
        decoded by the target) paired with the hidden state before it, then each drafted token
        with the MTP block's own. A sequence whose hidden state is unknown is left out."""
        self._clear()
        slots: dict[int, int] = {}
        for seq_id, (tokens, n) in wanted.items():
            pos = len(tokens) - 1
            rows = self.rows.get(seq_id)
            h = rows.at(pos - 1) if rows is not None and n > 0 and pos > 0 else None
            if h is None or not self._room():
                continue
            L.llama_memory_seq_rm(self.memory, seq_id, pos, -1)
            slots[seq_id] = self._add(seq_id, tokens[-1], pos, h, output=True)
        drafts: dict[int, list[int]] = {s: [] for s in slots}
        while slots:
            started = self._clock()
            if not self._process():
                break
            elapsed = self._clock() - started
            self._position_s = elapsed if not self._position_s else 0.8 * self._position_s + 0.2 * elapsed
            nxt: dict[int, tuple[int, np.ndarray]] = {}
            for seq_id, idx in slots.items():
                logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
                token = int(logits.argmax())
                prob = 1.0 / float(np.exp(logits - logits[token]).sum())
                if prob < p_min.get(seq_id, 0.0) or token >= self.n_vocab:
                    continue
                draft = drafts[seq_id]
                draft.append(token)
                if len(draft) < wanted[seq_id][1]:
                    h_ptr = self._hidden_ith(self.ctx, idx)
                    if h_ptr:
                        nxt[seq_id] = (token, np.ctypeslib.as_array(h_ptr, shape=(self.n_embd,)).copy())
            self._clear()
            slots = {}
            for seq_id, (token, h) in nxt.items():
                pos = len(wanted[seq_id][0]) - 1 + len(drafts[seq_id])
                slots[seq_id] = self._add(seq_id, token, pos, h, output=True)
        return {s: d for s, d in drafts.items() if d}

    # -- the MTP batch ---------------------------------------------------------------------------------

    def _room(self) -> bool:
        return len(self._keep) < self.n_batch

    def _add(self, seq_id: int, token: int, pos: int, h: np.ndarray, *, output: bool) -> int:
        row = np.ascontiguousarray(h, dtype=np.float32)
        self._keep.append(row)
        idx = int(L.llama_batch_ext_add_token(self.batch, seq_id, token))
        if idx < 0:
            raise RuntimeError(f"llama_batch_ext_add_token refused the MTP entry (code {idx})")
        p = L.llama_pos(pos)
        embd = L.llama_embd(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, self.n_embd)
        ok = L.llama_batch_ext_set_pos(self.batch, idx, ctypes.byref(p))
        ok = ok and L.llama_batch_ext_set_embd_token(self.batch, idx, embd)
        if not (ok and L.llama_batch_ext_set_output_logits(self.batch, idx, output)):
            raise RuntimeError("llama.cpp refused the MTP entry's position, state row or output flag")
        return idx

    def _clear(self) -> None:
        L.llama_batch_ext_clear(self.batch)
        self._keep = []

    def _process(self) -> bool:
        """Decode the MTP batch (if anything is in it); False when llama.cpp refused it (then every
        sequence's MTP cells go: drafts only get worse, never wrong)."""
        if not self._keep:
            return True
        rc = int(L.llama_process(self.ctx, L.LLAMA_PROCESS_TYPE_DECODE, self.batch))
        self.decodes += 1
        if rc != 0:
            self.forget()
            return False
        return True

    def free(self) -> None:
        if self.batch is not None:
            L.llama_batch_ext_free(self.batch)
            self.batch = None
