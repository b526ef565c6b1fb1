"""One greedy answer from a GGUF, locally or split across RPC workers, as one JSON line:

    python tests/rpc_main.py MODEL [HOST:PORT,... [SHARE,SHARE...]] [--adapter LORA.gguf]
    {"tokens": [...], "buffers": {"CPU_Mapped": MiB, "RPC0[127.0.0.1:50071]": MiB, ...}}

With ``--adapter``, the answer through that LoRA adapter is added as ``"adapter"``.

A separate process: registering workers changes the process's device list for good (and a worker
that dies mid-answer makes llama.cpp abort), so the test runner never does it itself. The weights
are not repacked (``extra_buffers=False``) on either side: an RPC worker computes with ggml's plain
CPU kernels, so the local run must too for the answers to be comparable token for token.
"""

from __future__ import annotations

import json
import re
import sys

from edge_qwen._llama import capture_log
from edge_qwen.runtime import Model
from edge_qwen.runtime.handles import drain

BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
PROMPT = [{"role": "user", "content": "Write a Python function that reverses a string."}]


def main() -> int:
    args = sys.argv[1:]
    adapter = args.pop(args.index("--adapter") + 1) if "--adapter" in args else None
    args = [a for a in args if a != "--adapter"]
    path, rpc = args[0], tuple(args[1].split(",")) if len(args) > 1 else ()
    split = args[2] if len(args) > 2 else None
    buffers: dict[str, float] = {}

    def on_line(_level: int, line: str) -> None:
        if m := BUFFER.search(line):
            buffers[m.group(1)] = float(m.group(2))

    with capture_log(on_line):
        model = Model.load(
            path, n_ctx=1024, parallel=2, n_threads=2, rpc=rpc, extra_buffers=False, tensor_split=split,
            adapters={"lora": adapter} if adapter else None,
        )
    with model:
        result = model.chat(PROMPT, temperature=0, max_tokens=24)
        # the other request paths on the same model: prompt-lookup speculation, and two at once
        lookup = model.chat(PROMPT, temperature=0, max_tokens=24, speculative="lookup")
        streams = [model.chat_stream(PROMPT, temperature=0, max_tokens=24) for _ in range(2)]
        batched = [list(drain(s).token_ids) for s in streams]
        tuned = model.chat(PROMPT, temperature=0, max_tokens=24, adapter="lora") if adapter else None
    out = {"tokens": list(result.token_ids), "lookup": list(lookup.token_ids), "batched": batched}
    if tuned is not None:
        out["adapter"] = list(tuned.token_ids)
    print(json.dumps({**out, "buffers": buffers}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
