"""A grammar's sampling cost is read from its text before it reaches the compute thread."""

from __future__ import annotations

import json
import time

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from edge_qwen.errors import ConfigError
from edge_qwen.runtime.grammar_cost import MAX_GRAMMAR_FANOUT, MAX_GRAMMAR_WIDTH, check_grammar, grammar_width


def schema(s: object) -> str:
    return str(json_schema_to_gbnf(json.dumps(s)))


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ('root ::= "a" "b"', 1),
        ('root ::= "a"? "a"? "b"', 3),
        ('root ::= "x" ("a"?){10} "b"', 11),
        ('root ::= ("a" | "b"?){5}', 5),
        ('root ::= "a"{0,50}', 1),  # nested optionals behind a letter: one place at a time
        ('root ::= x x x "b"\nx ::= "a" |', 4),
        ('root ::= "a"* "b"* "c"', 3),
        ('root ::= r0\nr0 ::= "a"? r1\nr1 ::= "a"? r2\nr2 ::= "b"', 3),
        ('# a comment\nroot ::= (\n  "a"?\n  "b"?\n)', 2),
    ],
)
def test_the_width_counts_the_optional_items_in_a_row(text: str, width: int) -> None:
    assert grammar_width(text) == width


@pytest.mark.parametrize(
    "s",
    [
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(30)}},
        {"enum": [f"value-{i}" for i in range(500)]},
        {
            "anyOf": [
                {"type": "object", "properties": {f"k{k}{i}": {"type": "integer"} for i in range(8)}}
                for k in range(12)
            ]
        },
        {"type": "array", "items": {"type": "number"}, "maxItems": 50},
        {"type": "string", "maxLength": 200},
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": "^[a-z]{2,8}-[0-9]{3}$"},
        {},
    ],
)
def test_the_schemas_people_write_pass(s: object) -> None:
    check_grammar(schema(s))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (schema({"type": "string", "pattern": "^(a?){1000}$"}), "run of 1001 optional items"),
        (schema({"type": "string", "pattern": "^(a|b?){100}$"}), "run of 101 optional items"),
        ("root ::= " + '"a"? ' * 60 + '"b"', "run of 61 optional items"),
        (
            "\n".join([f'r{i} ::= "a"? r{i + 1}' for i in range(80)] + ['r80 ::= "b"', "root ::= r0"]),
            "run of 81 optional items",
        ),
        (schema({"enum": ["a" * 30 + str(i) for i in range(2000)]}), "go 2,000 ways at once"),
    ],
)
def test_grammars_that_would_stall_sampling_are_refused_with_the_way_out(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_grammar(text)
    assert "limit of" in str(info.value)


def test_the_limits_sit_between_what_people_write_and_what_stalls() -> None:
    assert grammar_width('root ::= ("a"?){40}') == MAX_GRAMMAR_WIDTH
    check_grammar('root ::= ("a"?){40}')
    check_grammar(schema({"enum": [str(i) for i in range(MAX_GRAMMAR_FANOUT)]}))


def chain(n: int, item: str) -> str:
    return "\n".join(f"r{i} ::= {item} r{i + 1}" for i in range(n)) + f'\nr{n} ::= "b"\nroot ::= r0'


def test_a_long_chain_of_rules_is_fine_until_its_links_may_all_be_empty() -> None:
    start = time.perf_counter()
    check_grammar(chain(12_000, '"a"'))
    with pytest.raises(ConfigError, match="too deeply to check"):
        check_grammar(chain(12_000, '"a"?'))
    assert time.perf_counter() - start < 5


def test_text_the_reader_cannot_parse_is_left_for_llama_cpp_to_refuse() -> None:
    check_grammar("root ::= ( unclosed")
    check_grammar("this is not gbnf")
