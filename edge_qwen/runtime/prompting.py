"""Turning what a caller passes — a prompt, a conversation (with images or audio), sampling
keywords — into the typed :class:`~edge_qwen.runtime.request.RequestSpec` the step loop runs.
Everything here happens on the caller's thread, before anything is queued, so bad input fails
fast with a clear error. :class:`~edge_qwen.runtime.model.Model` holds one :class:`RequestBuilder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError, ContextOverflowError
from ..settings import ModelSettings
from .lora import AdapterSlots, adapter_set
from .media.content import LOCAL_POLICY, MediaPolicy, has_media
from .media.multimodal import MediaSupport, MediaTokens, tokenize_with_media
from .presets import SamplingParams, preset_for, resolve
from .request import AdapterSet, RequestSpec
from .sampling import grammar_text
from .speculation.speculative import DRAFT, MTP, SpecConfig, spec_config
from .text.chat_template import RenderedPrompt
from .text.tool_calls import Tools
from .vocab import Vocabulary

Message = Mapping[str, Any]


@dataclass(frozen=True)
class RequestOptions:
    """What a request asks for besides sampling: its LoRA set (``adapter=`` / ``adapters=``), its
    speculation (a mode, a mapping or a :class:`~.speculation.speculative.SpecConfig`), and the
    policy its images and audio are read under. The public calls take them as keywords beside the
    sampling ones; :meth:`split` separates the two once, at the boundary."""

    adapter: str | None = None
    adapters: Any = None  # {name: scale} or (name, scale) pairs
    speculative: Any = None
    media_policy: MediaPolicy = LOCAL_POLICY

    @classmethod
    def split(cls, keywords: Mapping[str, Any]) -> tuple[RequestOptions, dict[str, Any]]:
        """(the request options among ``keywords``, the sampling keywords left)."""
        names = {f.name for f in fields(cls)}
        options = cls(**{k: v for k, v in keywords.items() if k in names})
        return options, {k: v for k, v in keywords.items() if k not in names}


class RequestBuilder:
    """Builds the requests of one loaded model, from its vocabulary, settings and companions."""

    def __init__(
        self,
        vocab: Vocabulary,
        settings: ModelSettings,
        *,
        architecture: str,
        n_ctx_seq: int,
        lora: AdapterSlots,
        media: MediaSupport | None,
        draft_source: str | None,
    ) -> None:
        self.vocab = vocab
        self.settings = settings
        self.architecture = architecture
        self.n_ctx_seq = n_ctx_seq
        self._lora = lora
        self._media = media
        self.draft_source = draft_source  # "draft" (a draft model), "mtp" (the MTP head) or None

    def plain(self, prompt: str | Sequence[int], keywords: Mapping[str, Any]) -> RequestSpec:
        options, sampling = RequestOptions.split(keywords)
        chosen = self._adapter_set(options)
        speculative = self._speculative(options.speculative)
        if isinstance(prompt, str):
            self._check_text_fits(prompt)
            tokens = self.vocab.tokenize(prompt, add_special=True, parse_special=False)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ConfigError("the prompt is empty; pass some text or token ids")
        self._check_fits(tokens)
        params = self._params(enable_thinking=None, sampling=sampling)
        return RequestSpec(tuple(tokens), params, adapters=chosen, speculative=speculative)

    def chat(
        self,
        messages: Sequence[Message],
        keywords: Mapping[str, Any],
        *,
        enable_thinking: bool | None,
        thinking_budget: int | None,
        tools: Tools | None,
        truncate: bool,
    ) -> RequestSpec:
        options, sampling = RequestOptions.split(keywords)
        sampling = _with_tool_grammar(sampling, tools)
        if tools is not None and tools.mode == "required":  # _with_tool_grammar set its grammar
            enable_thinking = False  # the grammar starts the answer with the call: no reasoning block first
        shown = tools.rendered if tools is not None else None  # what the template shows the model
        chosen = self._adapter_set(options)
        speculative = self._speculative(options.speculative)
        policy = options.media_policy
        if thinking_budget is not None and thinking_budget < 0:
            raise ConfigError("thinking_budget must be >= 0 (tokens of reasoning before the answer)")
        msgs = [dict(m) for m in messages]
        media: MediaTokens | None = None
        if self._media is not None and has_media(msgs):
            if speculative is not None and speculative.mode == "draft":
                speculative = None  # the draft model has no projector: it cannot read the image
            rendered, media = self._media_prompt(msgs, policy, enable_thinking=enable_thinking, tools=shown)
            tokens = media.tokens
        else:
            while True:
                rendered = self.vocab.render(msgs, enable_thinking=enable_thinking, tools=shown)
                fewest = self.vocab.fewest_tokens(rendered.text)
                tokens = self.vocab.prompt_tokens(rendered) if fewest < self.n_ctx_seq else []
                if tokens and len(tokens) < self.n_ctx_seq:
                    break
                if not truncate or not _drop_oldest_turn(msgs):
                    if not tokens:  # too long to be worth tokenizing
                        raise ContextOverflowError(fewest, self.n_ctx_seq, at_least=True)
                    raise ContextOverflowError(len(tokens), self.n_ctx_seq)
        return RequestSpec(
            tuple(tokens),
            self._params(enable_thinking=enable_thinking, sampling=sampling),
            thinking_open=rendered.thinking_open,
            thinking_budget=thinking_budget,
            adapters=chosen,
            speculative=speculative,
            media=media.spans if media is not None else (),
            media_owners=media.owners if media is not None else (),
            tools=tools,
        )

    def _media_prompt(
        self, msgs: list[dict[str, Any]], policy: MediaPolicy, *, enable_thinking: bool | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[RenderedPrompt, MediaTokens]:  # fmt: skip
        """A chat with images or audio: media loaded under ``policy``, the template rendered with one
        marker per item, and each marker replaced by mtmd's chunks (:mod:`.multimodal`)."""
        assert self._media is not None
        extracted = self._media.extract(msgs, policy)
        rendered = self.vocab.render(extracted.messages, enable_thinking=enable_thinking, tools=tools)
        self._check_text_fits(rendered.text)  # media items are arrays until mtmd tokenizes them
        prompt = tokenize_with_media(
            self._media.mtmd, rendered.segments, extracted.items,
            lambda text, special: self.vocab.tokenize(text, parse_special=special),
        )  # fmt: skip
        cells = len(prompt.tokens) + prompt.extra_cells
        if cells >= self.n_ctx_seq:
            for owner in prompt.owners:
                owner.close()
            raise ContextOverflowError(cells, self.n_ctx_seq)
        return rendered, prompt

    def reset(self) -> RequestSpec:
        """The request that empties the KV cache (an empty prompt, after those already queued)."""
        return RequestSpec((), self._params(enable_thinking=None, sampling={}))

    def _speculative(self, value: Any) -> SpecConfig | None:
        """A request's speculation: its own choice, else the model's default (``speculative=`` at
        load), else the draft model when one is loaded."""
        config = spec_config(value if value is not None else self.settings.speculative)
        if config is None and self.draft_source is not None:
            config = MTP if self.draft_source == "mtp" else DRAFT
        if config is None or config.mode == self.draft_source or config.mode not in ("draft", "mtp"):
            return config
        if config.mode == "draft":
            raise ConfigError(
                "speculative mode 'draft' needs a draft model: load this one with "
                "Model.load(path, draft='smaller.gguf') (edge-qwen run/serve --draft FILE), or use 'lookup'"
                + (" or 'mtp'" if self.draft_source == "mtp" else "")
            )
        raise ConfigError(
            "speculative mode 'mtp' drafts with the model's own MTP head: load it with "
            "Model.load(path, mtp=True) (edge-qwen run/serve --mtp), a Qwen3.5 or Qwen3-Next GGUF "
            "converted with its MTP head (edge-qwen convert keeps it unless --no-mtp); or use 'lookup'"
            + (" or 'draft'" if self.draft_source == "draft" else "")
        )

    def _adapter_set(self, options: RequestOptions) -> AdapterSet:
        """The request's LoRA set, checked against the loaded adapters."""
        return adapter_set(options.adapter, options.adapters, self._lora.names)

    def _params(self, *, enable_thinking: bool | None, sampling: Mapping[str, Any]) -> SamplingParams:
        preset = preset_for(self.architecture, enable_thinking is not False)
        params = resolve(preset, **{k: v for k, v in sampling.items() if v is not None})
        grammar_text(params)  # a schema or grammar llama.cpp cannot take fails here, before queueing
        return params

    def _check_text_fits(self, text: str) -> None:
        """Refuse text that cannot fit before it is tokenized (see :meth:`Vocabulary.fewest_tokens`)."""
        fewest = self.vocab.fewest_tokens(text)
        if fewest >= self.n_ctx_seq:
            raise ContextOverflowError(fewest, self.n_ctx_seq, at_least=True)

    def _check_fits(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n_ctx_seq:
            raise ContextOverflowError(len(tokens), self.n_ctx_seq)


def _with_tool_grammar(sampling: dict[str, Any], tools: Tools | None) -> dict[str, Any]:
    """A required or named ``tool_choice`` constrains the answer with the tools' grammar; ``auto``
    with it lazily, from the moment the model opens a call (unless the caller has a grammar)."""
    if (
        tools is not None
        and tools.mode == "auto"
        and not (sampling.get("grammar") or sampling.get("json_schema"))
    ):
        lazy = tools.grammar(lazy=True)
        return {**sampling, "grammar": lazy, "grammar_triggers": (tools.trigger,)} if lazy else sampling
    grammar = tools.grammar() if tools is not None else None
    if grammar is None:
        return sampling
    if sampling.get("grammar") or sampling.get("json_schema"):
        raise ConfigError(
            'tool_choice "required" or a named function constrains the answer with its own grammar; '
            'drop response_format / grammar, or use tool_choice "auto"'
        )
    return {**sampling, "grammar": grammar}


def _drop_oldest_turn(messages: list[dict[str, Any]]) -> bool:
    """Remove the oldest non-system turn (a user message and the replies up to the next user message)."""
    first = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
    if first is None:
        return False
    nxt = next((i for i in range(first + 1, len(messages)) if messages[i].get("role") == "user"), None)
    if nxt is None:
        return False
    del messages[first:nxt]
    return True
