"""What the installed llama.cpp can compute on, and how many layers a device can take.

* **Build facts** — :func:`build_info`: llama-cpp-python's version, the backends its llama.cpp
  registered (``ggml_backend_reg_*``), every device (``ggml_backend_dev_*``: name, type, free and
  total memory), GPU offload and RPC support, and the ``llama_print_system_info()`` line parsed into
  features (``AMX_INT8``, ``REPACK`` …). llama-cpp-python binds none of the ``ggml_backend_*``
  functions, so they are declared here with ctypes against the libggml it has already loaded.
How many layers a device can take is sizing: :mod:`edge_qwen.sizing.offload`.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

# ggml-backend.h enum ggml_backend_dev_type
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")
GPU_TYPES = frozenset({"gpu", "igpu"})


@dataclass(frozen=True)
class Device:
    """One ggml device: ``type`` is cpu | gpu | igpu | accel | meta; memory in bytes."""

    name: str
    description: str
    type: str
    backend: str
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class BuildInfo:
    """What the installed llama.cpp build contains."""

    llama_cpp_python: str
    system_info: str
    features: dict[str, dict[str, str]]  # backend name -> {feature: value}, from system_info
    backends: tuple[str, ...]  # registered backends, e.g. ("CPU",) or ("Vulkan", "CPU")
    devices: tuple[Device, ...]
    gpu_offload: bool
    rpc: bool
    mmap: bool
    max_devices: int
    library_dir: str
    error: str | None = None  # why the device list is missing, if it is
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_devices(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.type in GPU_TYPES)

    def feature(self, name: str, backend: str = "CPU") -> str | None:
        return self.features.get(backend, {}).get(name)

    @property
    def has_amx(self) -> bool:
        """Whether ggml-cpu was compiled with AMX-INT8 (``__AMX_INT8__``), whatever the CPU is."""
        return self.feature("AMX_INT8") == "1"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = [asdict(d) for d in self.devices]
        data["has_amx"] = self.has_amx
        return data


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """``"CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 | "`` -> ``{"CPU": {"SSE3": "1", ...}}``.

    Each backend with features contributes ``NAME : k = v | k = v | `` (llama.cpp's
    ``llama_print_system_info``); a backend name starts where a field holds ``" : "``.
    """
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in text.split("|"):
        if " : " in part:
            name, _, part = part.partition(" : ")
            current = out.setdefault(name.strip(), {})
        key, eq, value = part.partition("=")
        if current is not None and eq:
            current[key.strip()] = value.strip()
    return out


# --- ctypes declarations against libggml --------------------------------------------------------

_c = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "ggml_backend_reg_count": ([], ctypes.c_size_t),
    "ggml_backend_reg_get": ([ctypes.c_size_t], _c),
    "ggml_backend_reg_name": ([_c], ctypes.c_char_p),
    "ggml_backend_reg_dev_count": ([_c], ctypes.c_size_t),
    "ggml_backend_dev_count": ([], ctypes.c_size_t),
    "ggml_backend_dev_get": ([ctypes.c_size_t], _c),
    "ggml_backend_dev_name": ([_c], ctypes.c_char_p),
    "ggml_backend_dev_description": ([_c], ctypes.c_char_p),
    "ggml_backend_dev_type": ([_c], ctypes.c_int),
    "ggml_backend_dev_memory": ([_c, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)], None),
    "ggml_backend_dev_backend_reg": ([_c], _c),
}


@functools.lru_cache(maxsize=1)
def _libggml() -> Any:
    """libggml as llama-cpp-python loaded it, with the ``ggml_backend_*`` signatures declared."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def list_devices() -> tuple[tuple[str, ...], tuple[Device, ...]]:
    """(registered backend names, devices) of the loaded llama.cpp, in ggml's order."""
    from . import _llama, rpc

    _llama.init_backend()
    lib = _libggml()
    backends = tuple(
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    )
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if rpc.is_lost_device(dev):  # a dead RPC worker's: it would never answer
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        devices.append(
            Device(
                name=_text(lib.ggml_backend_dev_name(dev)),
                description=_text(lib.ggml_backend_dev_description(dev)),
                type=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else f"type{kind}",
                backend=_text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
                free_bytes=int(free.value),
                total_bytes=int(total.value),
            )
        )
    return backends, tuple(devices)


RPC_BACKEND = "RPC"  # the registry name of llama.cpp's RPC workers' devices


def local_gpus() -> list[Device]:
    """This machine's GPUs (RPC workers' devices also say "gpu"; they are left out)."""
    return [d for d in list_devices()[1] if d.type in GPU_TYPES and d.backend != RPC_BACKEND]


def local_gpu_handles() -> list[int]:
    """ggml_backend_dev_t of :func:`local_gpus`, in ggml's order (for llama_model_params.devices)."""
    lib = _libggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        backend = _text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)))
        if 0 <= kind < len(DEVICE_TYPES) and DEVICE_TYPES[kind] in GPU_TYPES and backend != RPC_BACKEND:
            out.append(dev)
    return out


def build_info() -> BuildInfo:
    """The installed llama.cpp's facts (loads the library; no model)."""
    import llama_cpp
    import llama_cpp.llama_cpp as L

    from . import _llama

    _llama.init_backend()
    system_info = _text(L.llama_print_system_info()).strip()
    error = None
    try:
        backends, devices = list_devices()
    except (AttributeError, OSError) as exc:  # a libggml without the device API
        backends, devices, error = (), (), f"device list unavailable: {exc}"
    return BuildInfo(
        llama_cpp_python=str(getattr(llama_cpp, "__version__", "?")),
        system_info=system_info,
        features=parse_system_info(system_info),
        backends=backends,
        devices=devices,
        # llama.cpp says yes for any build with RPC; offload here means a GPU of this machine
        gpu_offload=bool(L.llama_supports_gpu_offload())
        and any(d.type in GPU_TYPES and d.backend != RPC_BACKEND for d in devices),
        rpc=bool(L.llama_supports_rpc()),
        mmap=bool(L.llama_supports_mmap()),
        max_devices=int(L.llama_max_devices()),
        library_dir=str(_library_dir()),
        error=error,
    )


def _library_dir() -> str:
    import llama_cpp.llama_cpp as L

    return str(getattr(L, "_base_path", ""))
