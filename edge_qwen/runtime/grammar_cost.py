"""What a GBNF grammar will cost llama.cpp, read from its text before it reaches the compute thread.

llama.cpp keeps one parse stack per place the next character could be consumed, and checks every
candidate token against every stack. A run of optional items (``(a?){1000}``, ``"a"? "a"? ...``,
a chain of rules that may each be empty) leaves the next character many places to go, and those
stacks survive each character the run accepts: the cost of sampling one token grows with the
run's length to a high power (``(a?){100}`` takes seconds a token, ``{300}`` minutes), and nothing
can interrupt llama.cpp while it samples. So the grammar is read here first: :func:`check_grammar`
parses it the way llama.cpp's parser does and refuses one whose longest run of skippable items
(its *width*) or whose nesting is above a limit. Alternatives do not add to the width (an enum of
a thousand strings narrows after a character or two); only items that may match nothing do.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass, field

from ..errors import ConfigError

MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GRAMMAR_NESTING = 1024  # llama.cpp's grammar parser recurses per group: ~20k deep kills the process
# Measured with Qwen's 152k vocabulary on a 2-core EPYC, per token: (a?){32} +0.02 s, (a?){64} +0.3 s,
# (a?){100} +1.8 s; an enum of 2,000 strings that share a prefix +1 s; an object of 50 optional
# properties (width 49) +0.01 s, since each property's name ends its stacks at once.
MAX_GRAMMAR_WIDTH = 40  # the longest run of items that may each match nothing
MAX_GRAMMAR_FANOUT = 1024  # stacks the next character may go to: alternatives times optional items
_RECURSION = 4 * MAX_GRAMMAR_NESTING + 2000

_NAME = re.compile(r"[A-Za-z0-9-]+")
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_NESTED = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")


@dataclass(frozen=True)
class _Item:
    """One symbol of a sequence: a terminal (``rule`` None) or a rule reference, repeated lo..hi times."""

    rule: str | None
    lo: int = 1
    hi: int | None = 1  # None: unbounded


@dataclass
class _Grammar:
    rules: dict[str, list[list[_Item]]] = field(default_factory=dict)
    groups: int = 0


def check_grammar(text: str) -> None:
    """Refuse a GBNF grammar whose size, nesting or width would stall llama.cpp (see the module doc).

    A grammar this reader cannot parse is left for llama.cpp's own parser to refuse with its message.
    The verdict is remembered by text: a request's grammar is checked when it is prepared and again
    when its sampler is built on the compute thread, which must not parse it a second time.

    Raises:
        ConfigError: the grammar is too large, nests too deeply or is too wide; the message names the
            limit and what to lower.
    """
    refusal = _refusal(text)
    if refusal is not None:
        raise ConfigError(refusal)


@functools.lru_cache(maxsize=64)
def _refusal(text: str) -> str | None:
    """Why ``text`` is refused (:func:`check_grammar`), or None."""
    try:
        _check(text)
    except ConfigError as exc:
        return str(exc)
    return None


def _check(text: str) -> None:
    if len(text) > MAX_GRAMMAR_BYTES:
        raise ConfigError(
            f"the grammar is {len(text):,} characters, above the limit of {MAX_GRAMMAR_BYTES:,}; "
            "use a smaller schema (lower maxItems/maxLength) or a shorter grammar"
        )
    deepest = _nesting(text)
    if deepest > MAX_GRAMMAR_NESTING:
        raise ConfigError(
            f"the grammar nests {deepest} groups deep, above the limit of {MAX_GRAMMAR_NESTING} "
            "(a JSON schema's maxItems/maxLength of N becomes N nested groups); lower those bounds"
        )
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _RECURSION))  # Python frames only: 3.11+ keeps them off the C stack
    try:
        grammar = _parse(text)
        w = width(grammar)
        fan = width(grammar, fanout=True)
    except _Unparsed:
        return
    except RecursionError:
        raise ConfigError(
            "the grammar's rules refer to one another too deeply to check (and for llama.cpp to follow); "
            "flatten the chain of rules"
        ) from None
    finally:
        sys.setrecursionlimit(previous)
    if fan > MAX_GRAMMAR_FANOUT:
        raise ConfigError(
            f"the grammar lets the next character go {fan:,} ways at once, above the limit of "
            f"{MAX_GRAMMAR_FANOUT:,}: llama.cpp checks every candidate token against each of them; use fewer "
            "alternatives (enum values, anyOf branches) or fewer optional items"
        )
    if w > MAX_GRAMMAR_WIDTH:
        raise ConfigError(
            f"the grammar has a run of {w} optional items in a row, above the limit of {MAX_GRAMMAR_WIDTH}: "
            "llama.cpp's sampling time grows steeply with such runs (a pattern like (a?){100} takes "
            "seconds a token); bound the repetition with {0,N} instead of repeating an optional item, "
            "or make fewer of the items optional"
        )


def grammar_width(text: str, *, fanout: bool = False) -> int:
    """:func:`width` of a GBNF grammar's text (0 if it does not parse)."""
    try:
        return width(_parse(text), fanout=fanout)
    except _Unparsed:
        return 0


def _nesting(text: str) -> int:
    """How deep the grammar's parentheses nest, outside literals and character classes (one linear scan,
    so that a grammar too deep for the recursive readers is refused before they run)."""
    depth = deepest = 0
    quote = in_class = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            quote = ch != '"'
        elif in_class:
            in_class = ch != "]"
        elif ch == '"':
            quote = True
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


# -- cost -------------------------------------------------------------------------------------------


def width(grammar: _Grammar, *, fanout: bool = False) -> int:
    """The longest run of places the next character could be consumed, over every point of the grammar.

    With ``fanout`` alternatives add up (every stack llama.cpp keeps); without, only the best one counts
    (how many skippable items in a row: the stacks that survive each character).
    """
    rules = grammar.rules
    nullable = _nullable(rules)
    memo: dict[str, int] = {}

    def item_nullable(item: _Item) -> bool:
        return item.lo == 0 or (item.rule is not None and item.rule in nullable)

    def rule_width(name: str) -> int:
        if name not in memo:
            memo[name] = 1  # a recursive reference counts once
            widths = [seq_width(seq, 0) for seq in rules.get(name, ())]
            memo[name] = (sum(widths) if fanout else max(widths)) if widths else 1
        return memo[name]

    def item_width(item: _Item) -> int:
        if item.rule is None:
            return 1
        inner = rule_width(item.rule)
        if item.rule not in nullable:
            return inner
        copies = item.hi if item.hi is not None else max(item.lo, 1) + 1
        return inner * max(copies, 1)

    def seq_width(seq: list[_Item], start: int) -> int:
        total = 0
        for item in seq[start:]:
            total += item_width(item)
            if not item_nullable(item):
                break
        return max(total, 1)

    best = 1
    for name, seqs in rules.items():
        best = max(best, rule_width(name))
        for seq in seqs:
            for start in range(len(seq)):
                best = max(best, seq_width(seq, start))
    return best


def _nullable(rules: dict[str, list[list[_Item]]]) -> set[str]:
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, seqs in rules.items():
            if name in out:
                continue
            if any(all(i.lo == 0 or (i.rule is not None and i.rule in out) for i in seq) for seq in seqs):
                out.add(name)
                changed = True
    return out


# -- parsing (llama.cpp's GBNF syntax: grammars/README.md) -------------------------------------------


class _Unparsed(Exception):
    pass


def _parse(text: str) -> _Grammar:
    grammar = _Grammar()
    pos = _SPACE_NESTED.match(text, 0).end()  # type: ignore[union-attr]
    while pos < len(text):
        name = _NAME.match(text, pos)
        if name is None:
            raise _Unparsed
        pos = _SPACE.match(text, name.end()).end()  # type: ignore[union-attr]
        if not text.startswith("::=", pos):
            raise _Unparsed
        seqs, pos = _alternates(text, _SPACE_NESTED.match(text, pos + 3).end(), grammar, 0)  # type: ignore[union-attr]
        grammar.rules.setdefault(name.group(), []).extend(seqs)
        pos = _SPACE_NESTED.match(text, pos).end()  # type: ignore[union-attr]
    return grammar


def _alternates(text: str, pos: int, grammar: _Grammar, depth: int) -> tuple[list[list[_Item]], int]:
    seqs = []
    while True:
        seq, pos = _sequence(text, pos, grammar, depth)
        seqs.append(seq)
        if pos < len(text) and text[pos] == "|":
            pos = _SPACE_NESTED.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        return seqs, pos


def _sequence(text: str, pos: int, grammar: _Grammar, depth: int) -> tuple[list[_Item], int]:
    space = _SPACE_NESTED if depth else _SPACE
    seq: list[_Item] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == '"':
            end = _skip_quoted(text, pos + 1, '"')
            if end > pos + 2:  # "" adds no symbol
                seq.append(_Item(None))
            pos = end
        elif ch == "[":
            pos = _skip_quoted(text, pos + 1, "]")
            seq.append(_Item(None))
        elif ch in "<!":
            end = text.find(">", pos)
            if end < 0:
                raise _Unparsed
            seq.append(_Item(None))
            pos = end + 1
        elif ch == ".":
            seq.append(_Item(None))
            pos += 1
        elif ch == "(":
            grammar.groups += 1
            name = f"({grammar.groups})"
            inner, pos = _alternates(text, _SPACE_NESTED.match(text, pos + 1).end(), grammar, depth + 1)  # type: ignore[union-attr]
            if pos >= n or text[pos] != ")":
                raise _Unparsed
            grammar.rules[name] = inner
            seq.append(_Item(name))
            pos += 1
        elif ch in "*+?{":
            if not seq:
                raise _Unparsed
            lo, hi, pos = _repetition(text, pos)
            last = seq.pop()
            if (last.lo, last.hi) != (1, 1):  # ("a"?){3}: the repeated item becomes a group of its own
                grammar.groups += 1
                name = f"({grammar.groups})"
                grammar.rules[name] = [[last]]
                last = _Item(name)
            seq.append(_Item(last.rule, lo, hi))
        else:
            name_match = _NAME.match(text, pos)
            if name_match is None:
                break
            after = _SPACE.match(text, name_match.end()).end()  # type: ignore[union-attr]
            if text.startswith("::=", after):
                break  # the next rule's name
            seq.append(_Item(name_match.group()))
            pos = name_match.end()
        pos = space.match(text, pos).end()  # type: ignore[union-attr]
    return seq, pos


def _repetition(text: str, pos: int) -> tuple[int, int | None, int]:
    ch = text[pos]
    if ch == "*":
        return 0, None, pos + 1
    if ch == "+":
        return 1, None, pos + 1
    if ch == "?":
        return 0, 1, pos + 1
    m = _REPEAT.match(text, pos)
    if m is None:
        raise _Unparsed
    lo = int(m.group(1))
    if m.group(2) is None:
        return lo, lo, m.end()
    return lo, int(m.group(3)) if m.group(3) else None, m.end()


def _skip_quoted(text: str, pos: int, close: str) -> int:
    """The index just past the closing ``close``, honouring backslash escapes."""
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\\":
            pos += 2
        elif ch == close:
            return pos + 1
        else:
            pos += 1
    raise _Unparsed
