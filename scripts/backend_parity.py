#!/usr/bin/env python3
"""Greedy tokens of a GGUF on whatever backend the running llama-cpp-python was built for.

    python scripts/backend_parity.py MODEL.gguf --gpu-layers 99 --tokens 32 > out.json
    python scripts/backend_parity.py --compare cpu.json vulkan.json

Used by ``scripts/check_backend.sh``: run once in the CPU venv and once in a GPU-backend venv,
then ``--compare``. Bare llama.cpp calls (no edge-qwen runtime), so the check depends only on the
build. For each step it records the chosen token and the gap between the two best logits: two
builds may legitimately differ where that gap is tiny (a near-tie), nowhere else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # edge_qwen from this checkout

PROMPTS = (
    "Write a Python function to implement binary search.",
    "What is the capital of France? Answer in one sentence.",
    "用一句话解释什么是递归。",
)
NEAR_TIE = 0.5  # logits; a divergence where the reference's top-2 gap is below this is a near-tie


def _template(text: str) -> bytes:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n".encode()


def run(model_path: str, gpu_layers: int, n_tokens: int) -> dict:
    import llama_cpp.llama_cpp as L
    import numpy as np

    from edge_qwen import backends

    _, devices = backends.list_devices()
    gpus = [d for d in devices if d.type in backends.GPU_TYPES]
    if gpu_layers and not gpus:
        raise SystemExit(
            "no GPU device registered: the comparison would be CPU against CPU "
            "(lavapipe needs GGML_VK_VISIBLE_DEVICES=0)"
        )
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = gpu_layers
    start = time.perf_counter()
    model = L.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        raise SystemExit(f"could not load {model_path}")
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 1024, 512, 512
    ctx = L.llama_init_from_model(model, cparams)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    load_s = time.perf_counter() - start
    results = []
    for prompt in PROMPTS:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        raw = _template(prompt)
        buf = (L.llama_token * 512)()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, 512, False, True)
        tokens, gaps = [], []
        batch_tokens = list(buf[:n])
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            arr = (L.llama_token * len(batch_tokens))(*batch_tokens)
            if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(batch_tokens))) != 0:
                raise SystemExit("llama_decode failed")
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            top2 = np.argpartition(logits, -2)[-2:]
            best = int(top2[np.argmax(logits[top2])])
            gaps.append(float(abs(logits[top2[0]] - logits[top2[1]])))
            tokens.append(best)
            if L.llama_vocab_is_eog(vocab, best):
                break
            batch_tokens = [best]
        results.append(
            {
                "prompt": prompt,
                "prompt_tokens": n,
                "tokens": tokens,
                "top2_gaps": gaps,
                "seconds": time.perf_counter() - t0,
            }
        )
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "gpu_layers": gpu_layers,
        "devices": [f"{d.name}: {d.description} [{d.type}] {d.total_bytes} bytes" for d in devices],
        "load_seconds": load_s,
        "results": results,
    }


def compare(ref: dict, other: dict) -> dict:
    """Per prompt: identical, a divergence at a near-tie of the reference, or a real mismatch."""
    rows = []
    for a, b in zip(ref["results"], other["results"], strict=True):
        first = next(
            (i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"], strict=False)) if x != y), None
        )
        if first is None and len(a["tokens"]) == len(b["tokens"]):
            verdict = "identical"
        elif first is None:
            verdict = "mismatch (length)"
        else:
            verdict = "near-tie" if a["top2_gaps"][first] < NEAR_TIE else "mismatch"
        rows.append(
            {
                "prompt": a["prompt"],
                "verdict": verdict,
                "first_divergence": first,
                "n_tokens": len(a["tokens"]),
                "seconds_ref": a["seconds"],
                "seconds_other": b["seconds"],
            }
        )
    ok = all(r["verdict"] in ("identical", "near-tie") for r in rows)
    return {"ok": ok, "prompts": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?")
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--compare", nargs=2, metavar=("REF.json", "OTHER.json"))
    args = parser.parse_args()
    if args.compare:
        with open(args.compare[0]) as fa, open(args.compare[1]) as fb:
            report = compare(json.load(fa), json.load(fb))
        print(json.dumps(report, ensure_ascii=False, indent=1))
        sys.exit(0 if report["ok"] else 1)
    if not args.model:
        parser.error("MODEL is required unless --compare")
    print(json.dumps(run(args.model, args.gpu_layers, args.tokens), ensure_ascii=False))


if __name__ == "__main__":
    main()
