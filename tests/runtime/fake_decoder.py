"""A fake llama.cpp context for testing the step loop without a model.

It keeps a real cell table (position, token, the set of sequences that hold it) with a fixed
number of cells, like llama.cpp's unified KV cache, and refuses a batch that does not fit (code 1,
the state unchanged). Its "model" is deterministic and depends on a sequence's *whole* cached
history, so a token fed at a wrong position or into the wrong sequence changes every later token.

With ``recurrent=True`` it is a hybrid model (Qwen3.5): besides the cells it keeps a recurrent
state per sequence (the tokens it has summarised, in order), which every decode checks against the
cells. That state cannot be cut back (``seq_rm`` past position 0 fails), except by restoring a
checkpoint (``seq_partial_state`` / ``load_partial_state``) or, within ``rollback_window`` tokens of
the sequence's last decode, by llama.cpp's snapshots; a rollback reaching before that decode is
what corrupts a real model's state silently, so here it fails the test.

For speculative decoding it can ask for logits at several positions of an entry (its draft), use
:func:`echo_token` (a model that mostly copies earlier text, so prompt lookup has something to find),
and draw tokens with a seeded :class:`FakeSampler` that records every token it accepted.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_qwen.runtime.engine.batcher import BatchEngine, BatchEntry
from edge_qwen.runtime.engine.prompt_cache import PromptCache
from edge_qwen.runtime.engine.sequence import Sequence as Seq
from edge_qwen.runtime.presets import SamplingParams
from edge_qwen.runtime.request import STARTED, Request, RequestSpec
from edge_qwen.runtime.results import GenerationChunk, ResultBuilder
from edge_qwen.runtime.speculation.speculative import spec_config

VOCAB = 97
EOG = 0


def next_token(history: Sequence[int], adapters: Any = ()) -> int:
    """The fake model: a hash of the whole history (and of the adapter set applied), never EOG
    unless the history ends in 13, 13."""
    if len(history) >= 2 and history[-1] == 13 and history[-2] == 13:
        return EOG
    h = 7 + sum(len(name) * 1000 + int(scale * 100) for name, scale in adapters)
    for i, t in enumerate(history):
        h = (h * 31 + t * (i + 3)) % 1_000_003
    return 1 + h % (VOCAB - 1)


def echo_token(history: Sequence[int], adapters: Any = ()) -> int:
    """A model that mostly copies: after an earlier occurrence of its last 3 tokens it goes on as that
    occurrence did, except where the hash of the whole history says otherwise (about 1 in 5)."""
    token = next_token(history, adapters)
    if token == EOG or len(history) < 4 or token % 5 == 0:
        return token
    tail = list(history[-3:])
    for i in range(len(history) - 4, -1, -1):
        if list(history[i : i + 3]) == tail:
            return history[i + 3]
    return token


Model = Callable[[Sequence[int], Any], int]


class FakeSampler:
    """A seeded stand-in for a llama.cpp chain at temperature > 0: the model's token with probability
    0.6, else one of its four neighbours; every drawn token is accepted into ``log`` (llama.cpp's
    ``llama_sampler_sample`` accepts what it selects)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.log: list[int] = []

    def draw(self, token: int) -> int:
        if token != EOG and self.rng.random() >= 0.6:
            token = 1 + (token + self.rng.randrange(1, 5)) % (VOCAB - 1)
        self.log.append(token)
        return token


@dataclass
class FakeDecoder:
    n_cells: int
    cells: list[tuple[int, int, set[int]]] = field(default_factory=list)
    batches: list[list[tuple[int, int, int, bool]]] = field(default_factory=list)
    _rows: dict[int, int] = field(default_factory=dict)
    fail_next: int = 0
    adapter_log: list[Any] = field(default_factory=list)
    adapters: Any = ()
    drafts: list[list[tuple[int, list[int]]]] = field(default_factory=list)
    model: Model = next_token
    confidence: Callable[[int], float] = lambda token: 1.0  # a draft model's probability of its token
    loaded: list[int] = field(default_factory=list)  # sequences a saved state was written into
    recurrent: bool = False
    rollback_window: int = 0
    states: dict[int, list[int]] = field(default_factory=dict)  # a hybrid's recurrent state per sequence
    last_decode: dict[int, int] = field(default_factory=dict)  # seq -> first position of its last decode
    pending_rollback: set[int] = field(default_factory=set)
    partial_loads: int = 0

    def history(self, seq_id: int) -> list[int]:
        return [tok for pos, tok, seqs in sorted(self.cells, key=lambda c: c[0]) if seq_id in seqs]

    def decode(self, entries: Sequence[BatchEntry]) -> int:
        if self.fail_next:
            self.fail_next -= 1
            return -3
        new = sum(len(e.tokens) for e in entries)
        if len(self.cells) + new > self.n_cells:
            return 1
        self.batches.append([(e.seq_id, len(e.tokens), e.pos, e.logits) for e in entries])
        if any(e.draft for e in entries):
            self.drafts.append([(e.seq_id, list(e.draft)) for e in entries if e.draft])
        row = 0
        for e in entries:
            assert e.pos == len(self.history(e.seq_id)), "a token fed at the wrong position"
            history = self.history(e.seq_id)
            if self.recurrent:
                state = self.states.setdefault(e.seq_id, [])
                assert state == history, "the recurrent state does not summarise the cached tokens"
                state += list(e.tokens)
                self.last_decode[e.seq_id] = e.pos
                self.pending_rollback.discard(e.seq_id)
            for j, tok in enumerate(e.tokens):
                self.cells.append((e.pos + j, tok, {e.seq_id}))
            history += list(e.tokens)
            row += len(e.tokens)
            if e.logits:
                n_rows = len(e.draft) + 1  # logits at each drafted position and the one before
                e.rows = list(range(row - n_rows, row))
                e.row = row - 1
                for i, r in enumerate(e.rows):
                    self._rows[r] = self.model(history[: len(history) - n_rows + 1 + i], self.adapters)
        return 0

    def sample(self, sampler: Any, row: int) -> int:
        token = self._rows[row]
        return sampler.draw(token) if sampler is not None else token

    def top(self, row: int) -> tuple[int, float]:
        """As a draft model's decoder: its greedy token at ``row`` and the confidence in it."""
        token = self._rows[row]
        return token, self.confidence(token)

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def seq_rm(self, seq_id: int, p0: int) -> bool:
        if self.recurrent:
            state = self.states.setdefault(seq_id, [])
            if p0 == 0:
                state.clear()
            elif p0 < len(state):
                first = self.last_decode.get(seq_id, 0)
                if len(state) - p0 > self.rollback_window or seq_id in self.pending_rollback:
                    return False
                assert p0 > first, "a rollback past the sequence's last decode (llama.cpp would corrupt it)"
                del state[p0:]
                self.pending_rollback.add(seq_id)
        kept = []
        for pos, tok, seqs in self.cells:
            if seq_id in seqs and pos >= p0:
                seqs = seqs - {seq_id}
            if seqs:
                kept.append((pos, tok, seqs))
        self.cells = kept
        return True

    def seq_cp(self, src: int, dst: int, n_tokens: int) -> None:
        for pos, _tok, seqs in self.cells:
            if src in seqs and pos < n_tokens:
                seqs.add(dst)
        if self.recurrent:  # llama.cpp shares the source's whole (live) state
            self.states[dst] = list(self.states.get(src, []))

    def seq_state(self, seq_id: int) -> bytes | None:
        cells = sorted((pos, tok) for pos, tok, seqs in self.cells if seq_id in seqs)
        if not cells:
            return None
        return json.dumps({"cells": cells, "state": self.states.get(seq_id, [])}).encode()

    def load_state(self, seq_id: int, state: bytes) -> bool:
        saved = json.loads(state)
        cells = saved["cells"]
        if len(self.cells) + len(cells) > self.n_cells:
            return False  # like llama.cpp: no free cells for it
        assert not self.history(seq_id), "a state written into a sequence that is not empty"
        self.cells += [(pos, tok, {seq_id}) for pos, tok in cells]
        if self.recurrent:
            self.states[seq_id] = list(saved["state"])
            self.pending_rollback.discard(seq_id)
        self.loaded.append(seq_id)
        return True

    def seq_embedding(self, seq_id: int) -> tuple[float, ...] | None:
        return None

    def seq_partial_state(self, seq_id: int) -> bytes | None:
        assert self.recurrent, "a checkpoint taken on an attention-only model"
        return json.dumps(self.states.get(seq_id, [])).encode()

    def load_partial_state(self, seq_id: int, state: bytes) -> bool:
        assert self.recurrent, "a checkpoint restored on an attention-only model"
        self.states[seq_id] = json.loads(state)
        self.pending_rollback.discard(seq_id)
        self.partial_loads += 1
        return True

    def use_adapters(self, key: Any) -> None:
        self.adapters = key
        self.adapter_log.append(key)

    def last_error(self) -> str:
        return ""


def solo(
    prompt: Sequence[int], max_tokens: int, adapters: Any = (), model: Model = next_token,
    sampler: FakeSampler | None = None,
) -> list[int]:  # fmt: skip
    """What a sequence generates alone: the reference for every batched run."""
    history, out = list(prompt), []
    while len(out) < max_tokens:
        token = model(history, adapters)
        if sampler is not None:
            token = sampler.draw(token)
        if token == EOG:
            break
        out.append(token)
        history.append(token)
    return out


class Collector:
    """A request's sink: every chunk, the STARTED marker, or an exception."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def __call__(self, item: object) -> None:
        self.items.append(item)

    @property
    def chunks(self) -> list[GenerationChunk]:
        return [i for i in self.items if isinstance(i, GenerationChunk)]

    @property
    def done(self) -> bool:
        failed = any(isinstance(i, BaseException) for i in self.items)
        return failed or any(c.finish_reason for c in self.chunks)

    @property
    def started(self) -> bool:
        return STARTED in self.items

    def result(self) -> Any:
        return ResultBuilder().extend(self.chunks)


def make_engine(
    *, parallel: int = 4, n_ctx: int = 4096, prefill_chunk: int = 16, unified: bool = True,
    n_batch: int = 512, model: Model = next_token, think_close: Sequence[int] = (),
    draft: Any = None, prompt_cache: int = 0, decoder: FakeDecoder | None = None,
    cost: Any = None, clock: Callable[[], float] | None = None,
    on_sequence: Callable[[Seq], None] | None = None, recurrent: bool = False, rollback_window: int = 0,
    checkpoints: int = 4, boundary: int | None = None,
) -> tuple[BatchEngine, FakeDecoder]:  # fmt: skip
    """An engine on a fake decoder (or ``decoder``); a request with a ``seed`` samples with a
    :class:`FakeSampler`; ``draft`` is a draft model (a DraftModel over another FakeDecoder);
    ``cost``/``clock`` a measured step cost and its clock; ``on_sequence`` sees each new sequence.
    ``recurrent``: a hybrid model, with ``checkpoints`` per slot taken at ``boundary`` tokens."""
    decoder = decoder or FakeDecoder(
        n_cells=n_ctx, model=model, recurrent=recurrent, rollback_window=rollback_window
    )

    def make(request: Request, n_ctx_seq: int) -> Seq:
        seed = request.params.seed
        seq = Seq(
            request,
            sampler=FakeSampler(seed) if seed is not None else None,
            piece=lambda t: f"<{t}>".encode(),
            think_close=think_close,
            n_ctx_seq=n_ctx_seq,
            free_sampler=lambda s: None,
        )
        if on_sequence is not None:
            on_sequence(seq)
        return seq

    engine = BatchEngine(
        decoder, make, parallel=parallel, n_ctx=n_ctx, n_batch=n_batch, unified=unified,
        prefill_chunk=prefill_chunk, draft=draft, prompt_cache=PromptCache(prompt_cache, min_tokens=8),
        cost=cost, checkpoints=checkpoints, boundary=boundary,
        **({"clock": clock} if clock is not None else {}),
    )  # fmt: skip
    return engine, decoder


def submit(
    engine: BatchEngine, prompt: Sequence[int], max_tokens: int = 12, adapters: Any = (),
    speculative: Any = None, thinking_budget: int | None = None, **params: Any,
) -> tuple[Request, Collector]:  # fmt: skip
    sink = Collector()
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, **params)
    spec = RequestSpec(
        tuple(prompt), sampling, thinking_open=thinking_budget is not None, thinking_budget=thinking_budget,
        adapters=adapters, speculative=spec_config(speculative),
    )  # fmt: skip
    request = Request(spec, sink)
    engine.submit(request)
    return request, sink


def run(engine: BatchEngine, limit: int = 10_000) -> int:
    steps = 0
    while engine.has_work and steps < limit:
        engine.step()
        steps += 1
    assert not engine.has_work, "the engine did not finish"
    return steps


def out_tokens(sink: Collector) -> list[int]:
    """The token ids a request streamed (the fake pieces are "<id>")."""
    text = sink.result().text
    return [int(t) for t in text.replace("><", " ").strip("<>").split()] if text else []
