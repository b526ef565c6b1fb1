"""Embedding and reranking requests: the prompts they run and what is done with the pooled output.

A model whose context pools (:func:`~edge_qwen.runtime.loader.pooling_of`: a Qwen3-Embedding GGUF,
a Qwen3-Reranker GGUF, or any model loaded with ``pooling=``) answers ``kind="embed"`` requests:
the step loop prefills the prompt like any other, batched with the other slots, and its answer is
the pooled output read after the last prompt token, instead of a sampled token.

* An embedding is the last token's final hidden state (Qwen3-Embedding's ``lasttoken`` pooling),
  L2-normalised unless asked not to be.
* A rerank score is llama.cpp's rank output for the (query, document) prompt: for Qwen3-Reranker
  the softmax over its "yes"/"no" head, so the score is P(yes), between 0 and 1. The prompt is the
  GGUF's ``rerank`` template (``{query}``, ``{document}``); the query and document are tokenized
  as text, so a ``<|im_end|>`` inside them stays text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, ContextOverflowError
from .presets import SamplingParams
from .request import RequestSpec
from .vocab import Vocabulary

RERANK_TEMPLATE_KEY = "tokenizer.chat_template.rerank"


def embedding_spec(vocab: Vocabulary, text: str, n_ctx_seq: int) -> RequestSpec:
    """The request that embeds ``text`` (the tokenizer adds what the GGUF says: BOS, EOS)."""
    if not isinstance(text, str) or not text:
        raise ConfigError("each input to embed must be a non-empty string")
    return _spec(vocab.tokenize(text, add_special=True, parse_special=False), n_ctx_seq)


def rerank_spec(
    vocab: Vocabulary, template: str | None, query: str, document: str, n_ctx_seq: int
) -> RequestSpec:
    """The request that scores ``document`` for ``query`` under the reranker's ``template``."""
    if template is None or "{query}" not in template or "{document}" not in template:
        plain = vocab.tokenize(query, add_special=True) + vocab.tokenize(document, add_special=True)
        return _spec(plain, n_ctx_seq)
    tokens: list[int] = []
    head, rest = template.split("{query}", 1)
    middle, tail = rest.split("{document}", 1)
    for piece, special in ((head, True), (query, False), (middle, True), (document, False), (tail, True)):
        tokens += vocab.tokenize(piece, parse_special=special) if piece else []
    return _spec(tokens, n_ctx_seq)


def _spec(tokens: list[int], n_ctx_seq: int) -> RequestSpec:
    if not tokens:
        raise ConfigError("nothing to embed: the text tokenized to no tokens")
    if len(tokens) >= n_ctx_seq:
        raise ContextOverflowError(len(tokens), n_ctx_seq)
    return RequestSpec(tuple(tokens), SamplingParams(temperature=0.0, max_tokens=1), kind="embed")


def as_matrix(vectors: Sequence[tuple[float, ...] | None], normalize: bool) -> np.ndarray:
    """The pooled vectors as rows of a float32 matrix, L2-normalised when asked."""
    if any(v is None for v in vectors):
        raise ConfigError("the model returned no pooled output; load it with pooling='last' to embed")
    out = np.asarray(vectors, dtype=np.float32)
    if normalize and out.size:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out
