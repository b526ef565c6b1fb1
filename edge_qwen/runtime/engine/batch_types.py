"""The types the step loop (:mod:`~edge_qwen.runtime.engine.batcher`) works with: a batch entry, and the
interfaces of what it drives — the llama.cpp context (:class:`Decoder`), a draft model
(:class:`DraftSource`) and a projector (:class:`MediaFeeder`) — so the loop is tested with fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..request import AdapterSet, Request
from .sequence import Sequence


@dataclass
class BatchEntry:
    """Consecutive tokens of one sequence in a batch. With ``logits``, the decoder fills ``rows``
    with the batch indices of the logits at the last ``len(draft) + 1`` positions (``row`` is the
    last one); ``draft`` are the trailing tokens that are only speculated."""

    seq_id: int
    tokens: Seq[int]
    pos: int
    logits: bool
    row: int = -1
    draft: Seq[int] = ()
    rows: list[int] = field(default_factory=list)


class Decoder(Protocol):
    """What the step loop needs from a llama.cpp context (see :mod:`edge_qwen.runtime.engine.decoder`).

    ``recurrent``: the model keeps a recurrent state per sequence (Qwen3.5, Qwen3-Next), so a cache
    is cut back only through a state checkpoint (``seq_partial_state`` / ``load_partial_state``:
    the recurrent layers' state alone), or by ``seq_rm`` within the last ``rollback_window`` tokens
    of the sequence's last decode (llama.cpp's per-token snapshots, for rejected drafts).
    """

    recurrent: bool
    rollback_window: int

    def decode(self, entries: Seq[BatchEntry]) -> int: ...
    def sample(self, sampler: Any, row: int) -> int: ...
    def is_eog(self, token: int) -> bool: ...
    def seq_rm(self, seq_id: int, p0: int) -> bool: ...
    def seq_cp(self, src: int, dst: int, n_tokens: int) -> None: ...
    def seq_state(self, seq_id: int) -> bytes | None: ...
    def load_state(self, seq_id: int, state: bytes) -> bool: ...
    def seq_partial_state(self, seq_id: int) -> bytes | None: ...
    def load_partial_state(self, seq_id: int, state: bytes) -> bool: ...
    def seq_embedding(self, seq_id: int) -> tuple[float, ...] | None: ...
    def use_adapters(self, key: AdapterSet) -> None: ...
    def last_error(self) -> str: ...


class MediaFeeder(Protocol):
    """Evaluates one image / audio chunk into a sequence at a position (mtmd's helper); 0 on success."""

    def eval_media(self, span: Any, seq_id: int, pos: int) -> int: ...


Wanted = tuple[Seq[int], int]  # a sequence's tokens so far, and the most tokens to draft for it


class DraftSource(Protocol):
    """A draft model (:class:`~edge_qwen.runtime.engine.draft.DraftModel`) or the model's MTP head
    (:class:`~edge_qwen.runtime.engine.mtp.MtpHead`): drafts for several sequences. ``observe`` sees
    every target decode right after it (the MTP head reads the target's hidden states there)."""

    def propose(self, wanted: Mapping[int, Wanted], p_min: Mapping[int, float]) -> dict[int, list[int]]: ...
    @property
    def position_cost(self) -> float: ...  # seconds a drafted position costs (one draft decode)
    def prefetch(self, histories: Mapping[int, Seq[int]]) -> None: ...
    def observe(self, entries: Seq[BatchEntry]) -> None: ...
    def forget(self, seq_ids: Iterable[int] | None = None) -> None: ...


SequenceFactory = Callable[[Request, int], Sequence]


@dataclass
class EngineStats:
    steps: int = 0
    decoded_tokens: int = 0
    preemptions: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    media_chunks: int = 0  # images / audio clips evaluated (a cached one is not counted again)
