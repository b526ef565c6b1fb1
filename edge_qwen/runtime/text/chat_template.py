"""Render Hugging Face chat templates exactly as transformers does, without control-token injection.

The rendering environment copies transformers' ``apply_chat_template``: a jinja2
``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols``
extension, the ``{% generation %}`` block, a ``tojson`` filter that keeps non-ASCII text and
never HTML-escapes, and the ``raise_exception``/``strftime_now`` globals. ``messages``, ``tools``
and ``documents`` are always defined (``None`` when absent), as in transformers.

Rendering alone is not enough: if the prompt text is tokenized with special-token parsing on, a
user who types ``<|im_end|>\\n<|im_start|>system`` forges a system turn. :func:`render_chat`
therefore also returns ``segments``: the template's own text (``parse_special=True``) and the
control-token strings that came from messages/tools/documents (``parse_special=False``), found by
rendering a second time with those strings swapped for private-use placeholder characters.

Content lists (OpenAI parts) are handed to the template as transformers does. Qwen2.5 and Qwen3
templates only know string content (Qwen3's silently drops a list, Qwen2.5's fails on it), so when
the rendering fails or loses a text part the parts are joined into one string and it is rendered
again. Media parts (``image_url``, ``input_audio`` …) always become ``media_marker``, the
placeholder libmtmd replaces with the image / audio chunks; see :mod:`edge_qwen.runtime.media.content`
for why the bare marker, not the template's ``<|vision_start|><|image_pad|><|vision_end|>``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from edge_qwen.errors import ChatTemplateError
from edge_qwen.runtime.text.template_limits import BoundedSandbox, render_bounded
from edge_qwen.runtime.text.thinking import reasoning_state

log = logging.getLogger(__name__)

#: Used when the model file carries no template: plain ChatML, the format every Qwen chat model uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Template variables that carry user data: control-token strings inside them are neutralised.
UNTRUSTED_VARIABLES = ("messages", "tools", "documents")
#: Content part types that carry media; each becomes the media marker.
MEDIA_PART_TYPES = frozenset({"image_url", "image", "input_audio", "audio"})

_GENERATION_PROMPT_WINDOW = 512  # chars searched for the last control token (thinking_open)
_PLACEHOLDER_START = 0xF0000  # Supplementary Private Use Area-A: never produced by a tokenizer


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready to tokenize.

    ``text`` is exactly what transformers renders. ``segments`` partition it: tokenize each piece
    with llama.cpp's ``parse_special`` set to its flag and concatenate the ids. ``thinking_open``
    says the prompt ends inside an open ``<think>`` block, so the model starts in reasoning.
    """

    text: str
    segments: list[tuple[str, bool]]
    thinking_open: bool


def render_chat(
    messages: list[dict[str, Any]],
    *,
    template: str | None,
    special_tokens: Collection[str],
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    media_marker: str | None = None,
    **template_kwargs: Any,
) -> RenderedPrompt:
    """Render ``messages`` with ``template`` (ChatML when None/empty) and mark control tokens.

    ``special_tokens`` must list every control-token string of the vocabulary (llama.cpp's
    CONTROL tokens, e.g. ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``); wherever one of them
    comes from user data it ends up in a ``parse_special=False`` segment. Extra keyword arguments
    (``enable_thinking``, ``tools``, ``documents``, …) are passed to the template as variables.
    ``media_marker`` is what each media part becomes (``Mtmd.marker``); without it media parts
    are refused.
    """
    source = template or CHATML_TEMPLATE
    compiled = _compile(source)
    untrusted = {name: template_kwargs.pop(name, None) for name in UNTRUSTED_VARIABLES}
    untrusted["messages"] = media_to_markers(messages, media_marker)
    context = {
        **template_kwargs,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": add_generation_prompt,
    }
    text, untrusted = _render_content_lists(compiled, context, untrusted)
    segments = _segments(compiled, source, context, untrusted, special_tokens, text)
    return RenderedPrompt(text=text, segments=segments, thinking_open=_ends_thinking(text, special_tokens))


def media_to_markers(messages: list[dict[str, Any]], marker: str | None) -> list[dict[str, Any]]:
    """``messages`` with each content list that holds media joined into one string, media → ``marker``.

    Raises:
        ChatTemplateError: a media part without a marker (the model has no mmproj), or a part of
            an unknown type.
    """
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list | tuple) and any(_part_type(p) != "text" for p in content):
            message = {**message, "content": "".join(_part_text(p, marker) for p in content)}
        out.append(message)
    return out


def _part_type(part: Any) -> Any:
    return part.get("type") if isinstance(part, Mapping) else None


def _part_text(part: Any, marker: str | None) -> str:
    kind = _part_type(part)
    if kind == "text":
        return str(part.get("text") or "")
    if kind not in MEDIA_PART_TYPES:
        raise ChatTemplateError(
            f"content part type {kind!r} is not supported; send 'text', 'image_url' or 'input_audio' parts"
        )
    if marker is None:
        raise ChatTemplateError(
            f"a {kind!r} content part needs a vision/audio model; load the model with its mmproj "
            "(Model.load(..., mmproj=...)) or send text only"
        )
    return marker


def _render_content_lists(
    compiled: jinja2.Template, context: Mapping[str, Any], untrusted: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Render as transformers does; if a content list failed or lost a text part, render again with
    each list's text parts joined into a string. Returns the text and the variables it used."""
    messages = untrusted["messages"]
    lists = [m["content"] for m in messages if isinstance(m, Mapping) and isinstance(m.get("content"), list)]
    try:
        text = _render(compiled, {**context, **untrusted})
    except ChatTemplateError:
        if not lists:
            raise
    else:
        if all(_part_text(p, None) in text for parts in lists for p in parts):
            return text, untrusted
    joined = {**untrusted, "messages": [_joined(m) for m in messages]}
    return _render(compiled, {**context, **joined}), joined


def _joined(message: Any) -> Any:
    if isinstance(message, Mapping) and isinstance(message.get("content"), list):
        return {**message, "content": "".join(_part_text(p, None) for p in message["content"])}
    return message


def render_plain(text: str, *, parse_special: bool = False) -> RenderedPrompt:
    """Wrap a raw prompt (``generate("...")``) without any template.

    Raw prompts are user text, so by default control-token strings in them stay plain text; pass
    ``parse_special=True`` for a prompt you built yourself with real control tokens (e.g. FIM).
    """
    segments = [(text, parse_special)] if text else []
    return RenderedPrompt(text=text, segments=segments, thinking_open=reasoning_state(text))


def _ends_thinking(text: str, special_tokens: Collection[str]) -> bool:
    """Does the generation prompt (the text after the last control token) leave ``<think>`` open?

    Only the tail counts, so a user who merely mentions ``<think>`` in the last turn does not
    switch the answer into reasoning.
    """
    tail = text[-_GENERATION_PROMPT_WINDOW:]
    cut = max(
        (tail.rfind(token) + len(token) for token in special_tokens if token and token in tail), default=0
    )
    return reasoning_state(tail[cut:])


def template_from_config(config: Mapping[str, Any], name: str | None = None) -> str | None:
    """The chat template stored in a ``tokenizer_config.json`` mapping (None when it has none).

    transformers stores either one string or a list of ``{"name", "template"}`` entries; ``name``
    picks an entry (``"tool_use"``, …), falling back to ``"default"``.
    """
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    named = {entry["name"]: entry["template"] for entry in value}
    if name is not None and name not in named:
        raise ChatTemplateError(
            f"no chat template named {name!r}; this tokenizer has {sorted(named)}. Pick one of those."
        )
    chosen = named.get(name or "default")
    return chosen if chosen is not None else next(iter(named.values()), None)


# --- the transformers-compatible environment ----------------------------------------------------


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: plain ``json.dumps`` (jinja's own escapes ``<``, ``>``, ``&``, ``'``)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlock(jinja2.ext.Extension):
    """Accept ``{% generation %}…{% endgeneration %}`` (transformers' assistant-mask marker).

    transformers uses it to compute assistant-token masks; for rendering it is transparent.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return body


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = BoundedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the chat template does not compile (line {exc.lineno}: {exc.message}); "
            "fix the template or pass another one with template=..."
        ) from exc


def _render(compiled: jinja2.Template, context: Mapping[str, Any]) -> str:
    try:
        return render_bounded(compiled, context)
    except SecurityError as exc:
        raise ChatTemplateError(
            f"the chat template was stopped: {exc}; the model file's template is broken or hostile: "
            "pass another template (--chat-template / template=...)"
        ) from exc
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(
            f"the chat template refused these messages: {exc}; fix the conversation "
            "(roles, order, content types) or pass another template"
        ) from exc
    except (TypeError, AttributeError) as exc:
        raise ChatTemplateError(
            f"the chat template failed on these messages ({exc}); check that every message has "
            "'role' and string 'content', or pass another template"
        ) from exc
    except (ArithmeticError, LookupError, RecursionError, ValueError, MemoryError) as exc:
        raise ChatTemplateError(
            f"the chat template raised {type(exc).__name__} ({exc}); it is broken for these messages: "
            "pass another template"
        ) from exc


# --- control-token protection ------------------------------------------------------------------


def _segments(
    compiled: jinja2.Template,
    source: str,
    context: Mapping[str, Any],
    untrusted: Mapping[str, Any],
    special_tokens: Collection[str],
    text: str,
) -> list[tuple[str, bool]]:
    """Split ``text`` into template text and control-token strings that came from user data."""
    pattern = _token_pattern(tuple(sorted(set(special_tokens) - {""}, key=len, reverse=True)))
    found = sorted({m.group() for s in _strings(untrusted) for m in pattern.finditer(s)}) if pattern else []
    if not found:
        return [(text, True)] if text else []
    taken = [source, *_strings(untrusted), *_strings(context)]
    placeholder_of = dict(zip(found, _free_characters(len(found), taken), strict=True))
    if len(found) > 1:  # fast path: protecting every token at once usually works
        attempt = _render_protected(compiled, context, untrusted, placeholder_of, text)
        if attempt is not None:
            return attempt
    protected: list[str] = []
    best: list[tuple[str, bool]] = [(text, True)]
    for token in found:  # the template inspects some of them: protect the tokens it tolerates
        mapping = {tok: placeholder_of[tok] for tok in [*protected, token]}
        attempt = _render_protected(compiled, context, untrusted, mapping, text)
        if attempt is not None:
            protected.append(token)
            best = attempt
    unprotected = [token for token in found if token not in protected]
    if unprotected:  # fail closed: such a string would become a real control token (a forged turn)
        raise ChatTemplateError(
            f"the messages contain {', '.join(map(repr, unprotected))}, and the chat template reads inside "
            "the message text (it slices or searches it), so these strings cannot be kept as plain text "
            "and would act as control tokens; remove them from the messages, or pass another template"
        )
    return best


def _render_protected(
    compiled: jinja2.Template,
    context: Mapping[str, Any],
    untrusted: Mapping[str, Any],
    mapping: Mapping[str, str],
    text: str,
) -> list[tuple[str, bool]] | None:
    """Render with tokens swapped for placeholders; None if that changes the rendered text."""
    pattern = _token_pattern(tuple(sorted(mapping, key=len, reverse=True)))
    assert pattern is not None
    swapped = {name: _substitute(value, pattern, mapping) for name, value in untrusted.items()}
    try:
        rendered = _render(compiled, {**context, **swapped})
    except ChatTemplateError:
        return None
    restore = {ord(ph): tok for tok, ph in mapping.items()}
    if rendered.translate(restore) != text:
        return None  # the template looked inside the protected text; placeholders changed its output
    return _split_at_placeholders(rendered, restore)


def _split_at_placeholders(rendered: str, restore: Mapping[int, str]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    start = 0
    for index, char in enumerate(rendered):
        if ord(char) in restore:
            _append(segments, rendered[start:index], True)
            _append(segments, restore[ord(char)], False)
            start = index + 1
    _append(segments, rendered[start:], True)
    return segments


def _append(segments: list[tuple[str, bool]], piece: str, parse_special: bool) -> None:
    if not piece:
        return
    if segments and segments[-1][1] == parse_special:
        segments[-1] = (segments[-1][0] + piece, parse_special)
    else:
        segments.append((piece, parse_special))


@functools.lru_cache(maxsize=32)
def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation, longest first, so ``<|im_start|>`` never matches half of a longer token."""
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def _strings(value: Any) -> Iterator[str]:
    """Every string inside nested mappings/sequences (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for item in value:
            yield from _strings(item)


def _substitute(value: Any, pattern: re.Pattern[str], mapping: Mapping[str, str]) -> Any:
    """A copy of ``value`` with every token string replaced by its placeholder."""
    if isinstance(value, str):
        return pattern.sub(lambda m: mapping[m.group()], value)
    if isinstance(value, Mapping):
        return {_substitute(k, pattern, mapping): _substitute(v, pattern, mapping) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(item, pattern, mapping) for item in value]
    return value


def _free_characters(count: int, texts: Sequence[str]) -> list[str]:
    """``count`` private-use characters that occur in none of ``texts``."""
    chosen: list[str] = []
    code = _PLACEHOLDER_START
    while len(chosen) < count:
        char = chr(code)
        if not any(char in text for text in texts):
            chosen.append(char)
        code += 1
    return chosen
