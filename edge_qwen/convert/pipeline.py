"""``convert``: Hugging Face Qwen checkpoint -> GGUF (F32/F16/BF16) -> quantized files + quality report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .._atomic import atomic_path
from ..manifest import Manifest, read_manifest, update_manifest, write_manifest
from ._io import HashingFile, write_hashed
from .architectures import HParams, as_causal_lm, load_hparams
from .config_bounds import check_weights
from .families import MTP_MODES, MtpMode, family_of
from .metadata import Source, add_general, add_hparams
from .mmproj import MMPROJ_TYPES, MmprojPlan, default_mmproj_type, finish_mmproj, prepare_mmproj
from .pooling import with_label_ids
from .safetensors import open_checkpoint
from .source import resolve_source
from .tensors import OUTTYPES, PlannedTensor, describe, parameter_count, plan_tensors, prepare
from .tokenizer import Vocab, load_vocab
from .vision import split_checkpoint


@dataclass
class ConvertResult:
    """What ``convert`` produced: the unquantized GGUF and every output's manifest."""

    gguf: Path
    source: Source
    architecture: str
    n_params: int
    outputs: list[Manifest] = field(default_factory=list)  # unquantized first
    mmproj: Manifest | None = None  # the projector's (Qwen-VL, Qwen2-Audio checkpoints)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gguf": str(self.gguf),
            "source": self.source.as_dict(),
            "architecture": self.architecture,
            "n_params": self.n_params,
            "outputs": [m.to_dict() for m in self.outputs],
            "mmproj": self.mmproj.to_dict() if self.mmproj is not None else None,
        }


def convert(
    src: str | Path,
    outdir: str | Path,
    *,
    quants: Sequence[str] = (),
    outtype: str = "f16",
    revision: str | None = None,
    ctx: int | None = None,
    evaluate: bool = True,
    threads: int | None = None,
    quiet: bool = False,
    mmproj_type: str | None = None,
    mtp: MtpMode = "keep",
) -> ConvertResult:
    """Convert a checkpoint folder or hub repo id to GGUF, then quantize and evaluate.

    Args:
        src: local checkpoint folder, or a hub repo id (downloaded through huggingface_hub).
        outdir: where outputs and their ``.json`` manifests go (created if needed).
        quants: quant types to produce from the unquantized file (e.g. ``["q4_k_m", "q8_0"]``).
        outtype: ``f16`` (default), ``bf16`` or ``f32`` for the unquantized file.
        revision: hub revision to pin (branch, tag or commit).
        ctx: target context; above the native one, YaRN rope scaling is written.
        evaluate: compute the quality report of each quantized output against the unquantized one.
        threads: threads for quantization and evaluation (default: llama.cpp's choice).
        quiet: no progress bars.
        mmproj_type: ``f16`` / ``f32`` / ``q8_0`` for a Qwen-VL / Qwen2-Audio checkpoint's projector
            (default: f32 beside an F32 model, else f16). Every output's manifest names the mmproj
            (``mmproj``) and the mmproj's names the model (``model``).
        mtp: a Qwen3.5 / Qwen3-Next checkpoint's multi-token-prediction head: ``keep`` (written
            as the block after the trunk, as llama.cpp's converter does), ``drop``, or ``only``
            (the head alone, a small GGUF named ``…-mtp-<type>.gguf`` for drafting).

    Returns:
        A :class:`ConvertResult`; manifests are also written beside every output.

    Raises:
        CheckpointError (and subclasses): missing/inconsistent config, weights or tokenizer.
        DownloadError: hub unreachable and not cached.
        QuantizeError: llama.cpp's quantizer failed.
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    if mmproj_type is not None and mmproj_type not in MMPROJ_TYPES:
        raise ValueError(f"mmproj_type must be one of {', '.join(MMPROJ_TYPES)}, got {mmproj_type!r}")
    if mtp not in MTP_MODES:
        raise ValueError(f"mtp must be one of {', '.join(MTP_MODES)}, got {mtp!r}")
    started = time.perf_counter()
    source = resolve_source(src, revision)
    hp = load_hparams(source.folder, aliases=[source.name])
    refs = as_causal_lm(open_checkpoint(source.folder), hp.arch)
    # config.json's sizes held to the real tensors before the vocabulary is padded to vocab_size
    shapes = {name: ref.shape for name, ref in refs.items()}
    check_weights(source.folder / "config.json", shapes, hp.n_vocab, hp.n_embd, hp.n_layer)
    vocab = load_vocab(source.folder, hp.n_vocab)
    hp = with_label_ids(hp, vocab.tokens)  # a reranker's "yes" / "no" rows
    hp = prepare(hp, refs, mtp)
    mmproj: MmprojPlan | None = None
    if hp.arch.multimodal:  # checked before anything is written
        refs, vision_refs = split_checkpoint(refs)
        mm_type = mmproj_type or default_mmproj_type(outtype)
        if hp.hybrid is None or not hp.hybrid.mtp_only:  # a drafting head needs no projector
            mmproj = prepare_mmproj(source, hp.n_embd, vision_refs, Path(outdir), mm_type)
    planned = plan_tensors(refs, hp, outtype, mtp)
    kind = "-mtp" if hp.hybrid is not None and hp.hybrid.mtp_only else ""
    out = Path(outdir) / f"{source.name.lower()}{kind}-{outtype}.gguf"
    result = ConvertResult(out, source, hp.arch.hf_name, parameter_count(planned))
    link: dict[str, Any] = {"mmproj": str(mmproj.path.resolve())} if mmproj is not None else {}

    from ..quantize import quantize

    def manifest(tmp: Path, extra: dict[str, Any]) -> None:
        """Written while the GGUF is still under its temporary name: a kill never leaves one without it."""
        result.outputs.append(
            write_manifest(
                out,
                measure=tmp,
                quant_type=outtype.upper(),
                source=source.as_dict(),
                elapsed_s=time.perf_counter() - started,
                tensor_types=describe(planned),
                **extra,
                **link,
            )
        )

    write_gguf(out, hp, vocab, planned, source, outtype, ctx=ctx, progress=not quiet, manifest=manifest)
    if mmproj is not None:
        result.mmproj = finish_mmproj(mmproj, source, out, progress=not quiet)
    quantized = [quantize(out, q, out_dir=out.parent, threads=threads, quiet=quiet) for q in quants]
    quality: dict[str, dict[str, Any]] = {}
    if evaluate and quantized:
        from ..quality import evaluate_quality

        for q in evaluate_quality(out, [r.path for r in quantized], threads=threads):
            quality[q.path] = q.as_dict()
    for r in quantized:
        update_manifest(
            r.path, source=source.as_dict(), reference=str(out), quality=quality.get(str(r.path)), **link
        )
        result.outputs.append(read_manifest(r.path))
    return result


def write_gguf(
    path: Path,
    hp: HParams,
    vocab: Vocab,
    planned: list[PlannedTensor],
    source: Source,
    outtype: str,
    *,
    ctx: int | None = None,
    progress: bool = False,
    manifest: Callable[[Path, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write the GGUF atomically: header, metadata and tokenizer, then tensors streamed one by one.

    ``manifest(tmp, extra)`` runs once the data is complete, before the rename (an old file at
    ``path`` is removed first, so it never sits beside the new manifest)."""
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, hp.arch.gguf_name)
        hashing: HashingFile | None = None
        try:
            for tensor in planned:
                writer.add_tensor(tensor.name, tensor, raw_dtype=tensor.ggml_type)  # type: ignore[arg-type]
            n_ctx = add_hparams(writer, hp, ctx)
            family_of(hp.arch).add_metadata(writer, hp)
            meta = add_general(writer, source, parameter_count(planned))
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_file_type(OUTTYPES[outtype][1])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to(writer)
            hashing = write_hashed(writer, progress=progress)
        finally:
            writer.close()
        assert hashing is not None
        extra = {
            "context_length": n_ctx,
            "name": meta.name,
            "size_label": meta.size_label,
            "sha256": hashing.sha256,
        }
        if manifest is not None:
            path.unlink(missing_ok=True)
            manifest(tmp, extra)
    return extra
