"""One line for setup.sh: what the installed llama.cpp really contains (its compiler from the
library's ELF comment, AMX kernels from llama_print_system_info), not what the compiler's name
promised: Debian 12's clang 14, for one, emits no AMX code at all."""

from __future__ import annotations

from edge_qwen import _llama


def main() -> None:
    built = _llama.library_compiler()
    who = f"{built[0]} {built[1]}" if built else "an unknown compiler"
    if _llama.build_has_amx():
        kernels = " with AMX kernels"
    else:
        kernels = " without AMX kernels (this CPU has AMX)" if _llama.has_amx() else ""
    print(f"setup: llama.cpp built by {who}{kernels}; extra buffers: {_llama.extra_buffers_decision()[1]}")


if __name__ == "__main__":
    main()
