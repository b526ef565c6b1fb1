"""Chat templates run under limits: time, output size, and the two operators that allocate.

A chat template is code from a model file. jinja2's sandbox already keeps it away from Python's
internals and caps ``range()``, but a template can still loop for ever (``range()`` nested), render
hundreds of megabytes, or build one huge value (``'a' * 2e9``, ``10 ** 10 ** 9``). So:

* rendering streams (``Template.generate``), and every chunk and every call the template makes
  checks a deadline (:data:`RENDER_SECONDS`) and the output so far (:data:`MAX_RENDER_CHARS`, plus
  twice the text the caller passed in: a long conversation is the caller's, not the template's);
* ``*`` and ``**`` are checked before they run: no string or list longer than the output limit, no
  exponent above :data:`MAX_EXPONENT`.

Exceeding a limit raises :class:`jinja2.sandbox.SecurityError`, which the caller reports as a
``ChatTemplateError`` naming the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

RENDER_SECONDS = 5.0
MAX_RENDER_CHARS = 8_000_000
MAX_EXPONENT = 4096


class _Budget(threading.local):
    deadline = float("inf")
    chars = MAX_RENDER_CHARS


_BUDGET = _Budget()


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with a deadline on calls and a size check on ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > MAX_RENDER_CHARS:
                        raise SecurityError(
                            f"the template builds a value of {len(seq) * times:,} items (limit "
                            f"{MAX_RENDER_CHARS:,})"
                        )
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"the template raises to the power {right} (limit {MAX_EXPONENT})")
        return super().call_binop(context, operator, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)


def _check_time() -> None:
    if time.monotonic() > _BUDGET.deadline:
        raise SecurityError(f"the template ran longer than {RENDER_SECONDS:g} s")


def render_bounded(compiled: jinja2.Template, context: Mapping[str, Any]) -> str:
    """``compiled.render(**context)`` within the time and size limits."""
    _BUDGET.deadline = time.monotonic() + RENDER_SECONDS
    _BUDGET.chars = MAX_RENDER_CHARS + 2 * _text_size(context)
    try:
        return _join(compiled.generate(**context))
    finally:
        _BUDGET.deadline = float("inf")
        _BUDGET.chars = MAX_RENDER_CHARS


def _text_size(value: Any) -> int:
    """Characters of text in ``value`` (strings inside mappings and sequences, walked without recursion)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _join(chunks: Iterable[str]) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > _BUDGET.chars:
            raise SecurityError(f"the template rendered more than {_BUDGET.chars:,} characters")
        _check_time()
        out.append(chunk)
    return "".join(out)
