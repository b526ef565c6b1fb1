"""models.yaml: every entry passes the schema, the shipped copy equals the top-level one, and the
schema catches the mistakes that would otherwise surface as a failed multi-GB download."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from edge_qwen.errors import RegistryError, UnknownModelError
from edge_qwen.registry.catalog import default_path, load_registry, parse_registry, parse_spec, validate

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load(default_path().read_text())

# The minimum list.
REQUIRED = [
    *(f"qwen2.5-{s}-instruct" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")),
    *(f"qwen2.5-coder-{s}-instruct" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b")),
    *(f"qwen2.5-math-{s}-instruct" for s in ("1.5b", "7b", "72b")),
    *(f"qwen3-{s}" for s in ("0.6b", "1.7b", "4b", "8b", "14b", "32b", "30b-a3b", "235b-a22b")),
]


def test_top_level_models_yaml_is_the_shipped_one() -> None:
    assert (ROOT / "models.yaml").read_bytes() == default_path().read_bytes()


def test_every_entry_passes_the_schema() -> None:
    assert validate(RAW) == []
    registry = load_registry()
    assert set(REQUIRED) <= set(registry.models)


@pytest.mark.parametrize("name", REQUIRED)
def test_entry_facts_are_consistent(name: str) -> None:
    entry = load_registry().get(name)
    a = entry.arch
    assert a.heads % a.kv_heads == 0
    # Qwen2/2.5 heads are hidden / heads wide; Qwen3 fixes head_dim at 128
    if entry.family.startswith("qwen2.5"):
        assert a.head_dim * a.heads == a.hidden
    else:
        assert a.head_dim == 128
    assert entry.is_moe == (entry.gguf_arch == "qwen3moe") == (a.experts is not None)
    for src in entry.gguf.values():
        for f in src.files:
            assert f.name.endswith(".gguf")
        if len(src.files) > 1:  # split GGUFs are numbered 00001-of-N in order
            assert all(f"-{i:05d}-of-{len(src.files):05d}" in f.name for i, f in enumerate(src.files, 1))


def test_the_pypi_mirrored_file_is_the_verified_asset() -> None:
    src = load_registry().get("qwen2.5-coder-0.5b-instruct").source(None)
    assert src.pypi is not None and len(src.pypi.packages) == 6
    assert src.files[0].size == 491_400_064
    assert src.files[0].sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _broken(mutate) -> dict:
    data = copy.deepcopy(RAW)
    mutate(data["models"]["qwen3-4b"])
    return data


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda e: e.pop("license"), "qwen3-4b.license: missing"),
        (lambda e: e.update(native_context="32k"), "qwen3-4b.native_context: expected int"),
        (lambda e: e.update(tasks=["chat", "poetry"]), "unknown task 'poetry'"),
        (lambda e: e["arch"].update(kv_heads=7), "heads must be a multiple of kv_heads"),
        (lambda e: e["gguf"]["q4_k_m"]["files"][0].update(size="2.5GB"), "size: a positive int or null"),
        (lambda e: e["gguf"]["q4_k_m"]["files"][0].update(sha256="abc"), "sha256: 64 lower-case hex"),
        (lambda e: e.update(params_active=5_000_000_000), "params_active: must be below params_total"),
        (lambda e: e.update(colour="blue"), "colour: unknown field"),
    ],
)
def test_the_schema_names_the_entry_and_field(mutate, problem: str) -> None:
    problems = validate(_broken(mutate))
    assert any(problem in p for p in problems), problems
    with pytest.raises(RegistryError, match="qwen3-4b"):
        parse_registry(_broken(mutate))


def test_specs_and_unknown_names() -> None:
    assert parse_spec("Qwen3-4B:Q4_K_M") == ("qwen3-4b", "q4_k_m")
    assert parse_spec("qwen3-4b") == ("qwen3-4b", None)
    registry = load_registry()
    with pytest.raises(UnknownModelError, match="did you mean qwen3-4b"):
        registry.get("qwen3-4")
    with pytest.raises(UnknownModelError, match="convert Qwen/Qwen2.5-Math-7B-Instruct"):
        registry.get("qwen2.5-math-7b-instruct").source("q4_k_m")
