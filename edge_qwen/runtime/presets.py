"""Sampling settings and Qwen's published presets, kept as data in ``edge_qwen/data/sampling_presets.yaml``.

Qwen publishes different sampling recommendations per model family and, for Qwen3, per mode
(thinking vs non-thinking; greedy decoding makes thinking models loop). The table maps a GGUF
``general.architecture`` to those presets so callers get good defaults without knowing them, and
:func:`resolve` layers the caller's explicit choices on top.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_qwen._data import read_data
from edge_qwen.errors import ConfigError

DEFAULT_PRESET = "default"
_MODES = ("thinking", "non_thinking")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token and when to stop.

    ``temperature=0`` means greedy decoding (top_p/top_k/min_p are then irrelevant); ``top_k=0``
    and ``min_p=0`` disable those filters; ``repeat_penalty=1`` disables it. ``max_tokens=None``
    generates until end-of-generation or a full context; ``seed=None`` picks a random seed.
    ``grammar`` (GBNF) and ``json_schema`` constrain the output; use at most one. With
    ``grammar_triggers`` (texts that are one token each, such as ``<tool_call>``) the grammar waits:
    it constrains the output from the first of those tokens on (a tool call once the model starts
    one); without such a token in the vocabulary the output stays free.
    """

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    grammar_triggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        for problem in _problems(self):
            raise ConfigError(problem)

    @property
    def greedy(self) -> bool:
        """True when decoding always takes the most likely token."""
        return self.temperature == 0


def _problems(params: SamplingParams) -> list[str]:
    """Every invalid setting, each phrased with the accepted range (the way out)."""
    problems = [
        f"{name} must be {rule}, got {getattr(params, name)!r}"
        for name, (valid, rule) in _RULES.items()
        if not valid(getattr(params, name))
    ]
    if params.grammar is not None and params.json_schema is not None:
        problems.append("grammar and json_schema both constrain the output; pass only one of them")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


MAX_STOPS, MAX_STOP_CHARS = 16, 512  # a request's stop strings: bounded work and memory per token
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_tokens": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer or None (no limit)"),
    "temperature": (lambda v: _is_number(v) and v >= 0, ">= 0 (0 = greedy)"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1] (1 disables it)"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 disables it)"),
    "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1] (0 disables it)"),
    "repeat_penalty": (lambda v: _is_number(v) and v > 0, "> 0 (1 disables it)"),
    "presence_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "in [-2, 2] (0 disables it)"),
    "frequency_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "in [-2, 2] (0 disables it)"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or None (random)"),
    "stop": (
        lambda v: len(v) <= MAX_STOPS and all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in v),
        f"a string or a list of at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters each",
    ),
    "grammar": (lambda v: v is None or isinstance(v, str), "GBNF source text (a string) or None"),
    "json_schema": (lambda v: v is None or isinstance(v, dict), "a JSON Schema object (a dict) or None"),
    "grammar_triggers": (
        lambda v: isinstance(v, tuple) and len(v) <= MAX_STOPS and all(isinstance(s, str) for s in v),
        f"a tuple of at most {MAX_STOPS} strings",
    ),
}


_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


def resolve(preset: SamplingParams, **overrides: Any) -> SamplingParams:
    """``preset`` with the caller's explicit settings applied; ``None`` keeps the preset's value."""
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {unknown}; valid settings are {sorted(_FIELDS)}")
    chosen = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(preset, **chosen) if chosen else preset


# --- the preset table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetTable:
    """The parsed YAML: named presets and, per architecture, which preset each mode uses."""

    presets: Mapping[str, SamplingParams]
    architectures: Mapping[str, Mapping[str, str]]

    def for_architecture(self, architecture: str, thinking: bool) -> SamplingParams:
        modes = self.architectures.get(architecture.lower())
        name = modes[_MODES[0] if thinking else _MODES[1]] if modes else DEFAULT_PRESET
        return self.presets[name]


def preset_for(architecture: str, thinking: bool) -> SamplingParams:
    """Qwen's recommended sampling for a GGUF ``general.architecture`` (``"qwen3"``, ``"qwen2"``, …).

    ``thinking`` selects Qwen3's thinking-mode preset; models without thinking ignore it.
    Unknown architectures get the ``default`` preset.
    """
    return default_table().for_architecture(architecture, thinking)


def get_preset(name: str) -> SamplingParams:
    """A preset by its name in the YAML table (``"qwen3-thinking"``, ``"qwen2.5"``, ``"default"``…)."""
    presets = default_table().presets
    if name not in presets:
        raise ConfigError(f"unknown sampling preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


@functools.lru_cache(maxsize=1)
def default_table() -> PresetTable:
    """The table shipped in the package (``edge_qwen/data/sampling_presets.yaml``), parsed once."""
    return parse_table(read_data("sampling_presets.yaml"), origin="edge_qwen/data/sampling_presets.yaml")


def load_table(path: str | Path) -> PresetTable:
    """A preset table from a YAML file of the same format as the shipped one."""
    return parse_table(Path(path).read_text(encoding="utf-8"), origin=str(path))


def parse_table(source: str, origin: str = "<string>") -> PresetTable:
    """Parse and validate preset YAML; every mistake is a :class:`ConfigError` naming ``origin``."""
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML ({exc}); fix its syntax") from exc
    data = _mapping(data, origin, "the file")
    _known_keys(data, {"presets", "architectures"}, origin, "the top level")
    presets = {
        str(name): _preset(values, origin, str(name))
        for name, values in _mapping(data.get("presets"), origin, "presets").items()
    }
    if DEFAULT_PRESET not in presets:
        raise ConfigError(f"{origin} has no {DEFAULT_PRESET!r} preset; add one (used for unknown models)")
    architectures = {
        str(arch).lower(): _modes(modes, presets, origin, str(arch))
        for arch, modes in _mapping(data.get("architectures", {}), origin, "architectures").items()
    }
    return PresetTable(presets=presets, architectures=architectures)


def _preset(values: Any, origin: str, name: str) -> SamplingParams:
    values = _mapping(values, origin, f"preset {name!r}")
    _known_keys(values, _FIELDS, origin, f"preset {name!r}")
    try:
        return SamplingParams(**values)
    except ConfigError as exc:
        raise ConfigError(f"{origin}, preset {name!r}: {exc}") from exc


def _modes(modes: Any, presets: Mapping[str, SamplingParams], origin: str, arch: str) -> dict[str, str]:
    modes = _mapping(modes, origin, f"architecture {arch!r}")
    _known_keys(modes, set(_MODES), origin, f"architecture {arch!r}")
    missing = [mode for mode in _MODES if mode not in modes]
    dangling = [str(name) for name in modes.values() if name not in presets]
    if missing or dangling:
        raise ConfigError(
            f"{origin}, architecture {arch!r}: give both {list(_MODES)} and name existing presets "
            f"(missing {missing}, unknown presets {dangling}; known: {sorted(presets)})"
        )
    return {mode: str(modes[mode]) for mode in _MODES}


def _mapping(value: Any, origin: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{origin}: {what} must be a mapping, got {type(value).__name__}; follow the shipped layout"
        )
    return value


def _known_keys(values: Mapping[str, Any], allowed: Collection[str], origin: str, what: str) -> None:
    unknown = sorted(str(key) for key in values if key not in allowed)
    if unknown:
        raise ConfigError(f"{origin}, {what}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")
