"""Tool calls: what a request declares, the grammar that enforces a call, and reading calls back.

Qwen models answer a call in one of two shapes, chosen by their chat template:

* ``json`` (Qwen2.5, Qwen3, QwQ): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* ``xml`` (Qwen3.5, Qwen3-Coder): ``<tool_call>\\n<function=NAME>\\n<parameter=P>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>``.

:class:`Tools` holds a request's declared functions and its ``tool_choice``. ``"required"`` and a
named function are enforced with a GBNF grammar built from the functions' JSON schemas, so the
answer is always a call whose arguments match the schema; ``"auto"`` lets the model choose, and
``"none"`` leaves the tools out of the prompt. :meth:`Tools.parse` reads the calls back from the
answer's text, in the model's own shape or the usual fallbacks: a fenced or bare JSON object that
names a declared function (the detokenizer drops ``<tool_call>`` where the vocabulary marks it as a
control token).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import ConfigError

ToolFormat = Literal["json", "xml"]
ToolMode = Literal["none", "auto", "required"]

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json)?\s*\n(.*?)\n\s*```", re.S)
_FUNCTION = re.compile(r"<function=([^>\n]+)>\s*(.*?)\s*</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: a declared function's name and its arguments as JSON text."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def tool_format(template: str | None) -> ToolFormat:
    """The call shape a chat template asks for (``json`` unless it spells ``<function=``)."""
    return "xml" if template and "<function=" in template and "<parameter=" in template else "json"


@dataclass(frozen=True)
class Tools:
    """A request's declared functions (OpenAI ``tools`` entries) and how it lets the model call them."""

    declared: tuple[Mapping[str, Any], ...]
    format: ToolFormat = "json"
    mode: ToolMode = "auto"
    name: str | None = None  # a named tool_choice: this function, always
    parallel: bool = True

    @classmethod
    def of(
        cls,
        tools: Sequence[Mapping[str, Any]] | None,
        tool_choice: str | Mapping[str, Any] | None = None,
        *,
        parallel: bool | None = None,
        template: str | None = None,
    ) -> Tools | None:
        """The typed form of ``tools`` + ``tool_choice`` (None without tools).

        Raises:
            ConfigError: a ``tool_choice`` that is not none/auto/required or a declared function.
        """
        if not tools:
            if tool_choice not in (None, "none", "auto"):
                raise ConfigError(f"tool_choice {tool_choice!r} needs tools; declare them in tools=[...]")
            return None
        declared = tuple(tools)
        names = [_name(t) for t in declared]
        mode: ToolMode
        name = None
        if tool_choice is None or tool_choice in ("none", "auto", "required"):
            mode = "auto" if tool_choice is None else tool_choice  # type: ignore[assignment]
        elif isinstance(tool_choice, Mapping):
            function = tool_choice.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            if not isinstance(name, str):
                raise ConfigError(
                    'tool_choice must be "none", "auto", "required" or '
                    '{"type": "function", "function": {"name": ...}}'
                )
            if name not in names:
                raise ConfigError(f"tool_choice names {name!r}, which is not among the tools ({names})")
            mode = "required"
        else:
            raise ConfigError(f'tool_choice {tool_choice!r} is not "none", "auto", "required" or a function')
        return cls(declared, tool_format(template), mode, name, True if parallel is None else parallel)

    @property
    def names(self) -> list[str]:
        return [_name(t) for t in self.declared]

    @property
    def rendered(self) -> tuple[Mapping[str, Any], ...] | None:
        """The tools the chat template shows the model (none for ``tool_choice: "none"``)."""
        return None if self.mode == "none" else self.declared

    def parameters(self, name: str) -> dict[str, Any]:
        for tool in self.declared:
            if _name(tool) == name:
                params = (tool.get("function") or tool).get("parameters")
                return dict(params) if isinstance(params, Mapping) else {"type": "object"}
        return {"type": "object"}

    # -- reading calls back -------------------------------------------------------------------------

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """(the text without its calls, the calls); ``text`` unchanged and no calls when it has none."""
        if self.mode == "none":
            return text, ()
        content, calls = self._xml(text) if "<function=" in text else self._json(text)
        if not self.parallel:
            calls = calls[:1]
        return content, tuple(calls)

    def _json(self, text: str) -> tuple[str, list[ToolCall]]:
        tagged = [c for m in _TAGGED.finditer(text) for c in self._objects(m.group(1))]
        if tagged:
            return _TAGGED.sub("", text).strip(), tagged
        fenced = [(m, self._objects(m.group(1))) for m in _FENCED.finditer(text)]
        calls = [c for _, found in fenced for c in found]
        if calls:
            for m, found in fenced:
                if found:
                    text = text.replace(m.group(0), "")
            return text.strip(), calls
        bare = self._objects(text.strip())
        return ("", bare) if bare else (text, [])

    def _objects(self, source: str) -> list[ToolCall]:
        """JSON objects back to back, each a call of a declared function; [] if anything else is there."""
        decoder = json.JSONDecoder()
        pos, calls, source = 0, [], source.strip()
        while pos < len(source):
            try:
                obj, pos = decoder.raw_decode(source, pos)
            except json.JSONDecodeError:
                return []
            call = self._call(obj)
            if call is None:
                return []
            calls.append(call)
            while pos < len(source) and (source[pos].isspace() or source[pos] == ","):
                pos += 1
        return calls

    def _call(self, obj: Any) -> ToolCall | None:
        if not isinstance(obj, dict) or obj.get("name") not in self.names:
            return None
        if set(obj) - {"name", "arguments", "parameters"}:
            return None
        arguments = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))

    def _xml(self, text: str) -> tuple[str, list[ToolCall]]:
        calls = []
        for m in _FUNCTION.finditer(text):
            name = m.group(1).strip()
            if name not in self.names:
                continue
            props = self.parameters(name).get("properties") or {}
            arguments = {
                p.group(1).strip(): _typed(p.group(2), props.get(p.group(1).strip()))
                for p in _PARAMETER.finditer(m.group(2))
            }
            calls.append(ToolCall(name, json.dumps(arguments, ensure_ascii=False)))
        if not calls:
            return text, []
        content = re.sub(r"<tool_call>.*?(?:</tool_call>|$)", "", text, flags=re.S)
        return _FUNCTION.sub("", content).strip(), calls

    # -- enforcing a call -------------------------------------------------------------------------

    #: where a call starts, for ``auto``'s lazy grammar (the same tag opens both shapes)
    trigger = "<tool_call>"

    def grammar(self, *, lazy: bool = False) -> str | None:
        """GBNF that admits only calls of the allowed functions: for ``required`` or named, or with
        ``lazy`` for ``auto`` too (applied from :attr:`trigger` on); else None."""
        if self.mode == "none" or (self.mode == "auto" and not lazy):
            return None
        allowed = [self.name] if self.name else self.names
        call = (
            _json_call_grammar(self, allowed) if self.format == "json" else _xml_call_grammar(self, allowed)
        )
        more = ' ( "\\n" call )*' if self.parallel else ""
        return f"root ::= call{more}\n{call}"


def _name(tool: Mapping[str, Any]) -> str:
    function = tool.get("function")
    return str((function if isinstance(function, Mapping) else tool).get("name", ""))


def _typed(value: str, schema: Any) -> Any:
    """An XML parameter's text as the JSON value its schema asks for (text when it does not parse)."""
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    looks_like_json = value.strip()[:1] in ("{", "[", '"') or value.strip() in ("true", "false", "null")
    if kind == "string" or (kind is None and not looks_like_json):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _json_call_grammar(tools: Tools, allowed: list[str]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": tools.parameters(name)},
            "required": ["name", "arguments"],
        }
        for name in allowed
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    try:
        body = str(json_schema_to_gbnf(json.dumps(schema)))
    except (AssertionError, ValueError, TypeError, KeyError, RecursionError, NotImplementedError) as exc:
        raise ConfigError(
            f"the tools' parameter schemas cannot be turned into a grammar ({type(exc).__name__}: {exc}); "
            'simplify them or use tool_choice "auto"'
        ) from None
    body = re.sub(r"^root ::=", "call-object ::=", body, count=1, flags=re.M)
    return f'call ::= "<tool_call>" [ \\t\\n]* call-object [ \\t\\n]* "</tool_call>"\n{body}'


_XML_VALUES = {
    "integer": '"-"? [0-9]+',
    "number": '"-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
    "boolean": '"true" | "false"',
}


def _xml_call_grammar(tools: Tools, allowed: list[str]) -> str:
    rules = ['xml-text ::= ([^<] | "<" [^/])*']
    functions = []
    for i, name in enumerate(allowed):
        params = tools.parameters(name)
        props = params.get("properties") or {}
        required = [p for p in params.get("required") or [] if p in props]
        parts = []
        for j, prop in enumerate([*required, *[p for p in props if p not in required]]):
            schema = props[prop] if isinstance(props[prop], Mapping) else {}
            enum = schema.get("enum")
            value = (
                " | ".join(_literal(str(v)) for v in enum) if isinstance(enum, list) and enum
                else _XML_VALUES.get(str(schema.get("type")), "xml-text")
            )  # fmt: skip
            rules.append(f"p{i}-{j} ::= {_literal(f'<parameter={prop}>' + chr(10))} ({value}) "
                         f"{_literal(chr(10) + '</parameter>' + chr(10))}")  # fmt: skip
            parts.append(f"p{i}-{j}" if prop in required else f"p{i}-{j}?")
        rules.append(f"f{i} ::= {_literal(name + '>' + chr(10))} {' '.join(parts)}")
        functions.append(f"f{i}")
    body = " | ".join(functions)
    call = f'call ::= "<tool_call>" [ \\t\\n]* "<function=" ({body}) "</function>" [ \\t\\n]* "</tool_call>"'
    return "\n".join([call, *rules])
