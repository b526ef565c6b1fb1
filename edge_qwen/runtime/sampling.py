"""Per-request llama.cpp sampler chains: grammar -> penalties -> top-k/top-p/min-p -> temperature -> draw.

Each request owns its chain (so seeds, grammars and penalty windows never leak between the
sequences of one batch); ``None`` means plain greedy, which the step loop serves with a numpy argmax
over the logits row instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any

import llama_cpp.llama_cpp as L

from .. import _llama
from ..errors import ConfigError
from . import _native
from .engine.sequence import Sequence
from .grammar_cost import check_grammar
from .presets import SamplingParams
from .request import Request

_PENALTY_LAST_N = 64


def build_sampler(params: SamplingParams, vocab: Any) -> Any:
    """The llama.cpp sampler chain for these parameters (the caller frees it); None for plain argmax."""
    grammar = grammar_text(params)
    plain_greedy = (params.temperature or 0.0) <= 0.0 and not grammar
    if plain_greedy and not _penalty_samplers_needed(params):
        return None
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    try:
        for sampler in _grammar_samplers(params, grammar, vocab) + _penalty_samplers(params, vocab):
            L.llama_sampler_chain_add(chain, sampler)
        for sampler in _value_samplers(params):
            L.llama_sampler_chain_add(chain, sampler)
    except BaseException:
        L.llama_sampler_free(chain)
        raise
    return chain


def _grammar_samplers(params: SamplingParams, grammar: str | None, vocab: Any) -> list[Any]:
    if not grammar:
        return []
    if params.grammar_triggers:  # lazy: free text until a trigger token, then the grammar
        triggers = _trigger_tokens(vocab, params.grammar_triggers)
        if not triggers:
            return []  # no single token opens a call in this vocabulary: the answer stays free
        tokens = (L.llama_token * len(triggers))(*triggers)
        sampler = L.llama_sampler_init_grammar_lazy_patterns(
            vocab, grammar.encode("utf-8"), b"root", None, 0, tokens, len(triggers)
        )
    else:
        sampler = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise ConfigError(
            "the grammar does not parse as GBNF (llama.cpp: "
            f"{_llama.take_recent_errors() or 'no details'}); fix the grammar or the JSON schema"
        )
    return [sampler]


def _trigger_tokens(vocab: Any, triggers: Seq[str]) -> list[int]:
    """The tokens that spell each trigger whole (``<tool_call>`` is one in Qwen's vocabularies).

    Tokens, not text patterns: llama.cpp replays a matched pattern's text into the grammar from the
    match on, and a piece that runs past the trigger (``>{``) would fail the grammar inside llama.cpp,
    which aborts the process."""
    out = []
    for text in triggers:
        ids = _native.tokenize(vocab, text, add_special=False, parse_special=True)
        if len(ids) == 1:
            out.append(ids[0])
    return out


def _penalty_samplers(params: SamplingParams, vocab: Any) -> list[Any]:
    """Repeat/presence/frequency penalties over the last 64 tokens.

    Why the top-k in front: llama.cpp's penalty sampler scans the whole 152k vocabulary every token
    (~5% of a 0.5B model's decode step). Penalties that only lower logits can move at most 64
    tokens down, so the final top-k (or argmax) after penalising is always inside the top
    ``k + 64`` before it; cutting there first gives identical results at a fraction of the cost.
    """
    if not _penalty_samplers_needed(params):
        return []
    repeat, freq, presence = _penalties(params)
    out = []
    greedy = (params.temperature or 0.0) <= 0.0
    keep = 1 if greedy else int(params.top_k or 0)
    if keep > 0 and repeat >= 1.0 and freq >= 0.0 and presence >= 0.0:
        out.append(L.llama_sampler_init_top_k(keep + _PENALTY_LAST_N))
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out.append(L.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N, repeat, freq, presence))
    return out


def _penalties(params: SamplingParams) -> tuple[float, float, float]:
    repeat = float(params.repeat_penalty if params.repeat_penalty is not None else 1.0)
    return repeat, float(params.frequency_penalty or 0.0), float(params.presence_penalty or 0.0)


def _penalty_samplers_needed(params: SamplingParams) -> bool:
    return _penalties(params) != (1.0, 0.0, 0.0)


def _value_samplers(params: SamplingParams) -> list[Any]:
    """top-k -> top-p -> min-p -> temperature -> draw, or plain argmax for temperature 0."""
    if (params.temperature or 0.0) <= 0.0:
        return [L.llama_sampler_init_greedy()]
    out = []
    if params.top_k and params.top_k > 0:
        out.append(L.llama_sampler_init_top_k(int(params.top_k)))
    if params.top_p is not None and params.top_p < 1.0:
        out.append(L.llama_sampler_init_top_p(float(params.top_p), 1))
    if params.min_p:
        out.append(L.llama_sampler_init_min_p(float(params.min_p), 1))
    seed = L.LLAMA_DEFAULT_SEED if params.seed is None else int(params.seed) & 0xFFFFFFFF
    out += [L.llama_sampler_init_temp(float(params.temperature)), L.llama_sampler_init_dist(seed)]
    return out


def grammar_text(params: SamplingParams) -> str | None:
    """GBNF from ``grammar``, or converted from ``json_schema`` (dict or JSON text), checked so that
    llama.cpp's parser can take it.

    Raises:
        ConfigError: both given, a schema the converter cannot handle, or a grammar too large, too
            deep or too costly to sample (:func:`grammar_cost.check_grammar`).
    """
    if params.grammar and params.json_schema:
        raise ConfigError("pass either grammar or json_schema, not both")
    if params.json_schema:
        schema = params.json_schema
        try:
            text = _schema_gbnf(schema if isinstance(schema, str) else json.dumps(schema))
        except (AssertionError, ValueError, TypeError, KeyError, RecursionError, NotImplementedError) as exc:
            raise ConfigError(
                f"the JSON schema cannot be turned into a grammar ({type(exc).__name__}: {exc}); "
                "simplify it (patterns, $refs) or drop response_format"
            ) from None
    else:
        text = params.grammar or ""
    if not text:
        return None
    check_grammar(text)
    return text


@functools.lru_cache(maxsize=32)
def _schema_gbnf(schema: str) -> str:
    """llama-cpp-python's GBNF for a JSON schema, converted once per schema (checked, then sampled)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema))


def native_sequences(
    vocab: Any, piece: Callable[[int], bytes], think_close: Seq[int]
) -> Callable[[Request, int], Sequence]:
    """The step loop's sequence factory for a llama.cpp model: on the compute thread, at admission,
    each request gets its own sampler chain over ``vocab`` and its own text state."""

    def make(request: Request, n_ctx_seq: int) -> Sequence:
        return Sequence(
            request,
            sampler=build_sampler(request.params, vocab),
            piece=piece,
            think_close=think_close,
            n_ctx_seq=n_ctx_seq,
            free_sampler=L.llama_sampler_free,
        )

    return make
