"""``edge-qwen info FILE.gguf`` — what a GGUF is, from its header alone (no weights loaded).

JSON keys (``--json``): exactly :func:`edge_qwen.gguf_info.gguf_info`'s dict, documented in
:mod:`edge_qwen.gguf_info` (path, file_size_bytes, architecture, name, file_type, parameter_count,
quant_mix, context_length, block_count, embedding_length, head_count, head_count_kv, expert_*,
rope, tokenizer, chat_template, estimated_file_sizes, …).
"""

from __future__ import annotations

import argparse
import unicodedata
from typing import Any

from ..gguf_info import gguf_info
from ..registry import resolve_model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a .gguf model file, or a registry name[:quant] already pulled")


def main(args: argparse.Namespace) -> dict[str, Any]:
    info = gguf_info(resolve_model(args.file))
    if not args.json:
        print(terminal_safe(format_info(info)))
    return info


def terminal_safe(text: str) -> str:
    """``text`` with every control character but the newline shown as an escape (``\\x1b``), so a
    file's metadata cannot retitle the window, clear the screen or move the cursor."""
    return "".join(
        c if c == "\n" or unicodedata.category(c) not in ("Cc", "Cf") else c.encode("unicode_escape").decode()
        for c in text
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"


def _format_projector(info: dict[str, Any]) -> str:
    pr = info["projector"]
    image = (
        f", patch {pr['patch_size']}, nominal image {pr['image_size']} px" if pr["kind"] == "vision" else ""
    )
    deepstack = f", {pr['deepstack_layers']} DeepStack mergers" if pr["deepstack_layers"] else ""
    lines = [
        ("file", f"{info['path']} ({_mib(info['file_size_bytes'])}, GGUF v{info['gguf_version']})"),
        (
            "projector",
            f"{info['name'] or '?'} — {pr['kind']} mmproj, {pr['type']}, "
            f"{_params(info['parameter_count'])} params",
        ),
        ("file type", _file_type(info)),
        ("encoder", f"{pr['blocks']} blocks, width {pr['width']}, {pr['heads']} heads{image}{deepstack}"),
        ("output", f"{pr['projection_dim']} values per token (the language model's hidden size)"),
    ]
    width = max(len(label) for label, _ in lines)
    out = [f"{label:>{width}}: {value}" for label, value in lines]
    out.append(f"{'tensors':>{width}}: {info['tensor_count']}")
    for name, row in info["quant_mix"].items():
        out.append(f"{'':>{width}}  {name:<6} ×{row['count']:<4} {_mib(row['bytes']):>12}")
    return "\n".join(out)


def format_info(info: dict[str, Any]) -> str:
    """Human summary: one ``label: value`` line per fact, the quant mix as an indented table."""
    if info.get("projector"):
        return _format_projector(info)
    tok = info["tokenizer"]
    rope = info["rope"]
    scaling = f", {rope['scaling_type']} scaling ×{rope['scaling_factor']}" if rope["scaling_type"] else ""
    template = info["chat_template"]
    params = _params(info["parameter_count"])
    lines = [
        ("file", f"{info['path']} ({_mib(info['file_size_bytes'])}, GGUF v{info['gguf_version']})"),
        ("model", f"{info['name'] or '?'} — {info['architecture']}, {params} params"),
        ("file type", _file_type(info)),
        (
            "layers",
            f"{info['block_count']} blocks, hidden {info['embedding_length']}, "
            f"FFN {info['feed_forward_length']}",
        ),
        ("attention", f"{info['head_count']} heads, {info['head_count_kv']} KV heads"),
        ("context", f"{info['context_length']} tokens, rope base {rope['freq_base']}{scaling}"),
    ]
    hybrid = info.get("hybrid")
    if hybrid:
        mtp = f", MTP head of {hybrid['mtp_layers']} block(s)" if hybrid["mtp_layers"] else ", no MTP head"
        lines.append(
            (
                "hybrid",
                f"{hybrid['recurrent_layers']} Gated DeltaNet (recurrent) + "
                f"{hybrid['attention_layers']} full-attention layers{mtp}",
            )
        )
    vision = info.get("vision")
    if vision:
        deepstack = (
            f", DeepStack into {vision['deepstack_layers']} layers" if vision["deepstack_layers"] else ""
        )
        lines.append(("images", f"M-RoPE sections {vision['mrope_sections']}{deepstack}; needs its mmproj"))
    if info["expert_count"]:
        lines.append(("experts", f"{info['expert_count']} ({info['expert_used_count']} used per token)"))
    lines += [
        (
            "tokenizer",
            f"{tok['model']}/{tok['pre']}, {tok['vocab_size']} tokens; "
            f"bos {tok['bos_token_id']} {tok['bos_token']!r}, "
            f"eos {tok['eos_token_id']} {tok['eos_token']!r}, "
            f"pad {tok['pad_token_id']} {tok['pad_token']!r}",
        ),
        ("chat template", f"yes ({template['length']} chars)" if template["present"] else "no"),
    ]
    width = max(len(label) for label, _ in lines)
    out = [f"{label:>{width}}: {value}" for label, value in lines]
    out.append(f"{'tensors':>{width}}: {info['tensor_count']}")
    for name, row in info["quant_mix"].items():
        out.append(f"{'':>{width}}  {name:<6} ×{row['count']:<4} {_mib(row['bytes']):>12}")
    sizes = ", ".join(f"{k} ≈{_mib(v)}" for k, v in info["estimated_file_sizes"].items())
    out.append(f"{'if quantized':>{width}}: {sizes}")
    return "\n".join(out)


def _file_type(info: dict[str, Any]) -> str:
    kind = f"{info['file_type'] or '?'} ({info['bits_per_weight']} bits/weight overall)"
    return f"{kind}; {info['searched_mix']}" if info.get("searched_mix") else kind
