"""Image input speed: edge-qwen's step loop against llama.cpp's own ``llama-mtmd-cli``, same run.

For a 448x448 image (256 image tokens after Qwen2-VL's 2x2 merge) and a short question, measure

* **image eval**: encoding the image (vision tower + merger) and decoding its embeddings into the
  KV cache. Ours: the wall time of the step loop's media feed (``MediaSupport.eval_media``);
  llama-mtmd-cli's: its "image slice encoded in" plus "image decoded (batch i/n) in" log lines;
* **the whole prompt** (text, image, text) to the first token: our time to first token against
  llama-mtmd-cli's encode time plus llama_perf's "prompt eval time".

Only real weights count for absolute speed, and no Qwen-VL checkpoint is reachable here, so the
pair is the project's tiny random Qwen2-VL (scripts/make_tiny_multimodal.py, real Qwen3 tokenizer,
converted to F16 + F16 mmproj): what is compared is the pipeline around the same llama.cpp kernels.

    python benchmarks/bench_mtmd.py [--runs 5] [--size 448] [--threads 2] [--out bench_mtmd.json]

Prints one JSON object (also written to ``--out``): medians of ``--runs``, and their ratio
(llama-mtmd-cli's time / ours: >= 1 means we are at least as fast).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
CACHE = Path.home() / ".cache/edge-qwen/bench/tiny-qwen2vl"
TOOLS = Path.home() / ".cache/edge-qwen-backends/llama-tools/build/bin"
PROMPT = "What is in this picture?"


def machine() -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "cores": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", text).group(1)  # type: ignore[union-attr]
        flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())  # type: ignore[union-attr]
        info["flags"] = sorted(flags & {"avx2", "avx512f", "amx_int8", "f16c", "fma"})
        info["cores"] = len(re.findall(r"^processor", text, re.M))
    except (OSError, AttributeError):
        pass
    return info


def tiny_pair() -> tuple[Path, Path]:
    """The tiny Qwen2-VL pair, made once and cached."""
    done = CACHE / "pair.json"
    if done.exists():
        pair = json.loads(done.read_text())
        return Path(pair["gguf"]), Path(pair["mmproj"])
    import fetch_assets
    from make_tiny_multimodal import make_multimodal_checkpoint

    from edge_qwen.convert import convert

    tokenizer = fetch_assets.fetch_tokenizer(log=lambda msg: None)
    ck = make_multimodal_checkpoint(
        CACHE / "checkpoint", arch="qwen2vl", dtype="f16", tokenizer_dir=tokenizer
    )
    out = convert(ck, CACHE / "gguf", outtype="f16", evaluate=False, quiet=True).as_dict()
    pair = {"gguf": str(out["gguf"]), "mmproj": str(out["mmproj"]["path"])}
    done.write_text(json.dumps(pair))
    return Path(pair["gguf"]), Path(pair["mmproj"])


def ours(gguf: Path, mmproj: Path, image: Path, runs: int, threads: int) -> dict[str, Any]:
    from edge_qwen.runtime import Model

    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(image)}},
                                             {"type": "text", "text": PROMPT}]}]  # fmt: skip
    evals: list[float] = []
    ttfts: list[float] = []
    with Model.load(gguf, mmproj=mmproj, n_ctx=2048, parallel=1, n_threads=threads) as model:
        media = model._media
        assert media is not None
        feed = media.eval_media

        def timed(span: Any, seq_id: int, pos: int) -> int:
            t0 = time.perf_counter()
            rc = feed(span, seq_id, pos)
            evals.append((time.perf_counter() - t0) * 1e3)
            return rc

        media.eval_media = timed  # type: ignore[method-assign]
        model.chat(messages, max_tokens=1)  # warm-up (first-call allocations), not counted
        evals.clear()
        for _ in range(runs):
            model.reset()  # the image is encoded again, not taken from the prefix cache
            result = model.chat(messages, temperature=0, max_tokens=1)
            ttfts.append(result.timings.ttft_ms)
            prompt_tokens = result.usage.prompt_tokens
    return {"image_eval_ms": statistics.median(evals), "ttft_ms": statistics.median(ttfts),
            "prompt_tokens": prompt_tokens, "runs": runs}  # fmt: skip


def llama_mtmd_cli(gguf: Path, mmproj: Path, image: Path, runs: int, threads: int) -> dict[str, Any]:
    cli = TOOLS / "llama-mtmd-cli"
    if not cli.exists():
        subprocess.run(["bash", str(ROOT / "scripts/build_llama_tools.sh"), "llama-mtmd-cli"], check=True)
    evals, prompts = [], []
    for _ in range(runs):
        proc = subprocess.run(
            [str(cli), "-m", str(gguf), "--mmproj", str(mmproj), "--image", str(image), "-p", PROMPT,
             "-n", "1", "-t", str(threads), "--temp", "0", "-c", "2048", "--no-warmup", "-lv", "4"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        log = proc.stdout + proc.stderr
        encoded = [
            int(m) for m in re.findall(r"(?:image slice encoded|mtmd batch encoding done) in (\d+) ms", log)
        ]
        decoded = [int(m) for m in re.findall(r"image decoded \(batch \d+/\d+\) in (\d+) ms", log)]
        prompt = re.search(r"prompt eval time =\s+([\d.]+) ms", log)
        if not encoded or prompt is None:
            raise RuntimeError(f"llama-mtmd-cli printed no encode or prompt time:\n{log[-2000:]}")
        evals.append(sum(encoded) + sum(decoded))
        prompts.append(
            sum(encoded) + float(prompt.group(1))
        )  # llama_perf's prompt eval leaves out the encode
    return {"image_eval_ms": statistics.median(evals), "prompt_ms": statistics.median(prompts), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_mtmd.json")
    args = parser.parse_args()
    from make_tiny_multimodal import random_image
    from PIL import Image

    gguf, mmproj = tiny_pair()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.png"
        Image.fromarray(random_image(args.size, args.size)).save(image)
        theirs = llama_mtmd_cli(gguf, mmproj, image, args.runs, args.threads)
        mine = ours(gguf, mmproj, image, args.runs, args.threads)
    report = {
        "machine": machine(),
        "pair": {"gguf": str(gguf), "mmproj": str(mmproj), "kind": "tiny random Qwen2-VL, F16 + F16 mmproj"},
        "image": f"{args.size}x{args.size}",
        "threads": args.threads,
        "edge_qwen": mine,
        "llama_mtmd_cli": theirs,
        "image_eval_speed_ratio": theirs["image_eval_ms"] / mine["image_eval_ms"],
        "prompt_speed_ratio": theirs["prompt_ms"] / mine["ttft_ms"],
    }
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
