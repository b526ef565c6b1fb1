"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic.

Only what edge-qwen can honour is modelled; unknown fields are ignored (clients send many optional
ones), but fields that would silently change the meaning of an answer (``n > 1``, ``logprobs``)
are refused with a message saying what to send instead.

Message content is a string or a list of OpenAI parts: ``text``, ``image_url`` (``{"url": ...}`` or
the URL string) and ``input_audio`` (``{"data": BASE64, "format": "wav" | "mp3"}``). The shape is
validated here (a malformed part is a 400 naming its field); the media itself is decoded and
limited later by :mod:`edge_qwen.runtime.media.content`, under the server's policy (no local files, no
remote URLs).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..runtime.presets import SamplingParams
from .tools import template_tool_calls


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the encoder picks its own grid


class ImageURLPart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL | str


class InputAudio(_Lenient):
    data: str = Field(min_length=1)
    format: Literal["wav", "mp3"]


class InputAudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImageURLPart | InputAudioPart, Field(discriminator="type")]


class FunctionDef(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    """One entry of ``tools``: ``{"type": "function", "function": {"name": ..., "parameters": {...}}}``."""

    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(_Lenient):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = ""


class ToolCall(_Lenient):
    """One entry of an assistant message's ``tool_calls``."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class JSONSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatMessage(_Lenient):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(not isinstance(p, TextPart) for p in self.content)

    def to_template(self) -> dict[str, Any]:
        """The message as the runtime expects it (developer -> system): text parts joined into a
        string; with media, the parts in OpenAI shape (``image_url`` always as ``{"url": ...}``)."""
        data = self.model_dump(exclude_none=True)
        data["role"] = "system" if self.role == "developer" else self.role
        data["content"] = self._parts() if self.has_media else self.text()
        if isinstance(data.get("tool_calls"), list):
            data["tool_calls"] = template_tool_calls(data["tool_calls"])
        return data

    def text(self) -> str:
        """The text of a message without media.

        Raises:
            ValueError: the message holds image or audio parts (use :meth:`to_template`).
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if self.has_media:
            raise ValueError("this message holds image or audio parts; it has no plain text form")
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def _parts(self) -> list[dict[str, Any]]:
        assert isinstance(self.content, list)
        parts = []
        for part in self.content:
            if isinstance(part, ImageURLPart):
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append(part.model_dump(exclude_none=True))
        return parts


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingRequest(_Lenient):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported (it would change answers unseen); leave it unset")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported; send several requests for several answers")
        return n

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("logprobs are not supported; leave logprobs unset")
        return value

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for the runtime (unset ones keep the model's preset)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        values = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "stop": tuple(stop) if stop else None,
        }
        return {k: v for k, v in values.items() if v is not None and k in SamplingParams.__dataclass_fields__}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class _ChosenFunction(BaseModel):
    name: str = Field(min_length=1, max_length=256)


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming one function: the answer is a call of it."""

    type: Literal["function"] = "function"
    function: _ChosenFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Qwen3 extras (also accepted the vLLM way, inside chat_template_kwargs)
    enable_thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=0)
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tool_shapes(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """Each tool is checked as a :class:`ToolDef` and kept as the dict the template reads."""
        if tools is None:
            return None
        return [ToolDef.model_validate(tool).model_dump(exclude_none=True) for tool in tools]

    def thinking(self) -> bool | None:
        if self.enable_thinking is not None:
            return self.enable_thinking
        value = (self.chat_template_kwargs or {}).get("enable_thinking")
        return bool(value) if value is not None else None

    def sampling(self) -> dict[str, Any]:
        values = super().sampling()
        if self.max_completion_tokens is not None:
            values["max_tokens"] = self.max_completion_tokens
        schema = _schema_of(self.response_format)
        if schema is not None:
            values["json_schema"] = schema
        return values


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send exactly one prompt per request (a string, or a list of one string)")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def _schema_of(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON Schema a ``response_format`` asks for (``json_object`` means any object)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.json_schema is not None:
        return response_format.json_schema.json_schema
    raise ValueError(
        "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
        "{'type': 'json_schema', 'json_schema': {'schema': {...}}}"
    )
