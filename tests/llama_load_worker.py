"""Load GGUF files with llama.cpp, one per stdin line, answering one JSON line each on stdout.

    {"path": ..., "loaded": true|false, "error": "<llama.cpp's last error lines>"}

A separate process so that a llama.cpp crash (an abort or a segfault on a hostile file) cannot take
the test runner down; one process for many files so the library loads once.
"""

from __future__ import annotations

import json
import os
import sys

from edge_qwen._llama import capture_log, init_backend


def main() -> int:
    import llama_cpp

    init_backend()
    params = llama_cpp.llama_model_default_params()
    params.use_mmap = True
    params.n_gpu_layers = 0
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        with capture_log() as log:
            model = llama_cpp.llama_model_load_from_file(os.fsencode(path), params)
            loaded = bool(model)
            if loaded:
                llama_cpp.llama_model_free(model)
        print(
            json.dumps({"path": path, "loaded": loaded, "error": "" if loaded else log.tail(3)}), flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
