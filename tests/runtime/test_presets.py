"""Sampling presets: Qwen's published recommendations as data, overridable per request."""

from __future__ import annotations

import pytest

from edge_qwen.errors import ConfigError
from edge_qwen.runtime.presets import (
    SamplingParams,
    default_table,
    get_preset,
    parse_table,
    preset_for,
    resolve,
)


def sampling(params: SamplingParams) -> tuple[float, float, int, float, float]:
    return params.temperature, params.top_p, params.top_k, params.min_p, params.repeat_penalty


@pytest.mark.parametrize("arch", ["qwen3", "qwen3moe", "Qwen3"])
def test_qwen3_thinking_and_non_thinking_presets(arch: str) -> None:
    assert sampling(preset_for(arch, thinking=True)) == (0.6, 0.95, 20, 0.0, 1.0)
    assert sampling(preset_for(arch, thinking=False)) == (0.7, 0.8, 20, 0.0, 1.0)


@pytest.mark.parametrize("thinking", [True, False])
def test_qwen2_family_uses_qwen25_generation_config(thinking: bool) -> None:
    assert sampling(preset_for("qwen2", thinking)) == (0.7, 0.8, 20, 0.0, 1.05)
    assert preset_for("qwen2moe", thinking) == get_preset("qwen2.5")


def test_unknown_architecture_falls_back_to_the_default_preset() -> None:
    assert preset_for("llama", thinking=True) == get_preset("default")
    assert sampling(get_preset("default")) == (0.8, 0.95, 40, 0.05, 1.0)


def test_presets_leave_request_settings_open() -> None:
    for params in default_table().presets.values():
        assert (params.max_tokens, params.seed, params.stop, params.grammar, params.json_schema) == (
            None,
            None,
            (),
            None,
            None,
        )


def test_resolve_applies_overrides_and_none_keeps_the_preset() -> None:
    preset = preset_for("qwen3", thinking=True)
    params = resolve(preset, temperature=0, top_p=None, max_tokens=64, stop=["\n\n", "END"], seed=7)
    assert params.greedy and params.temperature == 0
    assert params.top_p == preset.top_p
    assert (params.max_tokens, params.stop, params.seed) == (64, ("\n\n", "END"), 7)
    assert resolve(preset) is preset


def test_resolve_rejects_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="unknown sampling setting.*'tempreature'"):
        resolve(get_preset("default"), tempreature=0.1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"min_p": 1.5}, "min_p must be in"),
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"repeat_penalty": 0}, "repeat_penalty must be > 0"),
        ({"presence_penalty": 3}, "presence_penalty must be in"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"stop": [1]}, "stop must be a string"),
        ({"grammar": "root ::= x", "json_schema": {"type": "object"}}, "pass only one"),
    ],
)
def test_invalid_settings_raise_config_error(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**settings)  # type: ignore[arg-type]


def test_a_single_stop_string_becomes_a_tuple_and_params_stay_hashable() -> None:
    params = SamplingParams(stop="</s>", json_schema={"type": "object"})
    assert params.stop == ("</s>",)
    assert hash(params) == hash(SamplingParams(stop=("</s>",), json_schema={"type": "string"}))


GOOD = """
presets:
  default: {temperature: 0.5}
  fast: {temperature: 0.1, top_k: 5}
architectures:
  qwen3: {thinking: fast, non_thinking: default}
"""


def test_a_custom_table_parses() -> None:
    table = parse_table(GOOD)
    assert table.for_architecture("QWEN3", thinking=True).top_k == 5
    assert table.for_architecture("other", thinking=True).temperature == 0.5


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (GOOD.replace("top_k: 5", "top_kk: 5"), r"preset 'fast': unknown key\(s\) \['top_kk'\]"),
        (GOOD + "extra: 1\n", r"top level: unknown key\(s\) \['extra'\]"),
        (GOOD.replace("thinking: fast", "thinking: missing"), "unknown presets \\['missing'\\]"),
        (GOOD.replace("non_thinking: default", "nonthinking: default"), "unknown key"),
        (GOOD.replace("default: {temperature: 0.5}", "slow: {}"), "no 'default' preset"),
        (GOOD.replace("0.1", "-1"), "preset 'fast': temperature must be >= 0"),
        ("presets: [1, 2]", "presets must be a mapping"),
        ("presets: {default: {", "not valid YAML"),
    ],
)
def test_bad_tables_raise_config_error_naming_the_problem(source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_table(source, origin="my.yaml")


def test_grammars_llama_cpp_cannot_parse_safely_are_refused_before_they_reach_it() -> None:
    from edge_qwen.runtime.grammar_cost import MAX_GRAMMAR_NESTING
    from edge_qwen.runtime.sampling import grammar_text

    deep = {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_GRAMMAR_NESTING + 10}
    with pytest.raises(ConfigError, match="nests .* groups deep"):
        grammar_text(SamplingParams(json_schema=deep))
    with pytest.raises(ConfigError, match="above the limit"):
        grammar_text(SamplingParams(json_schema={**deep, "maxItems": 20_000}))
    with pytest.raises(ConfigError, match="cannot be turned into a grammar"):
        grammar_text(SamplingParams(json_schema={"type": "string", "pattern": "("}))
    with pytest.raises(ConfigError, match="nests"):
        grammar_text(SamplingParams(grammar="root ::= " + "(" * 2000 + '"a"' + ")" * 2000))
    ok = grammar_text(SamplingParams(json_schema={**deep, "maxItems": 50}))
    assert ok and "root" in ok
    assert grammar_text(SamplingParams(grammar='root ::= "(" [(] "\\\\(" ')) is not None  # quoted parens
