"""What the installed llama.cpp can compute on, and how many layers a device can take.

* **Build facts** — :func:`build_info`: llama-cpp-python's version, the backends its llama.cpp
  registered (``ggml_backend_reg_*``), every device (``ggml_backend_dev_*``: name, type, free and
  total memory), GPU offload and RPC support, and the ``llama_print_system_info()`` line parsed into
  features (``AMX_INT8``, ``REPACK`` …). llama-cpp-python binds none of the ``ggml_backend_*``
  functions, so they are declared here with ctypes against the libggml it has already loaded.
* **Offload planning** — :func:`plan_offload` is pure arithmetic: llama.cpp puts the *last*
  ``n_gpu_layers`` repeating layers on the device, together with their KV cache (``offload_kqv``
  defaults to true) and the device compute buffer, and the output layer once
  ``n_gpu_layers > n_layer``. :func:`offload_inputs` takes those numbers from the memory
  estimator's :class:`~edge_qwen.scheduler.estimate.ModelShape`, so ``n_gpu_layers="auto"`` means
  ``plan_offload(**offload_inputs(shape, settings), free_device_bytes=device.free_bytes)``.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the estimator imports the runtime; keep `import edge_qwen.backends` light
    from .runtime.results import ModelSettings
    from .scheduler.estimate import ModelShape

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
    from . import _llama

    _llama.init_backend()
    lib = _libggml()
    backends = tuple(
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    )
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
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
        gpu_offload=bool(L.llama_supports_gpu_offload()),
        rpc=bool(L.llama_supports_rpc()),
        mmap=bool(L.llama_supports_mmap()),
        max_devices=int(L.llama_max_devices()),
        library_dir=str(_library_dir()),
        error=error,
    )


def _library_dir() -> str:
    import llama_cpp.llama_cpp as L

    return str(getattr(L, "_base_path", ""))


# --- offload planning ---------------------------------------------------------------------------


def plan_offload(
    n_layers: int,
    per_layer_bytes: int | Sequence[int],
    fixed_device_bytes: int,
    kv_per_layer_bytes: int | Sequence[int],
    free_device_bytes: int,
    *,
    output_bytes: int | None = None,
    margin_bytes: int = 0,
) -> int:
    """How many layers (``n_gpu_layers``) fit in ``free_device_bytes``.

    llama.cpp offloads the *last* n repeating layers; each brings its weights and its KV cache, and
    any offload at all puts the compute buffer (``fixed_device_bytes``) on the device. Per-layer
    sizes may be one number or one per layer (mixed quant types make layers differ). With
    ``output_bytes`` given and every layer on the device, the output layer is tried too, and
    ``n_layers + 1`` is returned when it fits (llama.cpp: ``n_gpu_layers > n_layer``).

    Returns 0 when not even one layer fits beside the fixed buffers.
    """
    weights = _per_layer(per_layer_bytes, n_layers)
    kv = _per_layer(kv_per_layer_bytes, n_layers)
    room = free_device_bytes - margin_bytes - fixed_device_bytes
    used = n = 0
    for i in reversed(range(n_layers)):
        if used + weights[i] + kv[i] > room:
            break
        used += weights[i] + kv[i]
        n += 1
    if n == n_layers and output_bytes is not None and used + output_bytes <= room:
        n += 1
    return n


def _per_layer(value: int | Sequence[int], n_layers: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n_layers
    if len(value) != n_layers:
        raise ValueError(f"expected {n_layers} per-layer sizes, got {len(value)}")
    return [int(v) for v in value]


def offload_inputs(
    shape: ModelShape, settings: ModelSettings, *, parallel: int | None = None
) -> dict[str, Any]:
    """:func:`plan_offload`'s arguments (all but ``free_device_bytes``) for a model under settings.

    Weights per layer come from the header's tensors; the KV cache and the device compute buffer
    from :func:`edge_qwen.scheduler.estimate.estimate` itself (so however the estimator counts the
    context of parallel sequences, the plan agrees with it).
    """
    import dataclasses

    from .scheduler import estimate as E

    extra: dict[str, Any] = {} if parallel is None else {"parallel": parallel}
    one = E.estimate(shape, dataclasses.replace(settings, n_gpu_layers=1), gpu=True, **extra)
    on_host = E.estimate(shape, dataclasses.replace(settings, n_gpu_layers=0), gpu=True, **extra)
    k, v = settings.cache_type_k, settings.cache_type_v
    per_cell = [E.kv_cache_bytes(shape, 1, k, v, [i]) for i in range(shape.n_layer)]
    cells = on_host.kv_bytes // max(1, sum(per_cell))  # KV is linear in the cells: recover them
    per_layer = [0] * shape.n_layer
    output = 0
    for t in shape.tensors:
        if t.name.startswith("blk."):
            per_layer[int(t.name.split(".")[1])] += t.n_bytes
        elif t.name.startswith("output"):  # output.weight, output_norm.weight (as the estimator)
            output += t.n_bytes
    if shape.tied_output:  # the device gets its own copy of the embedding as the output matrix
        output += sum(t.n_bytes for t in shape.tensors if t.name.startswith("token_embd"))
    return {
        "n_layers": shape.n_layer,
        "per_layer_bytes": per_layer,
        "fixed_device_bytes": one.device_compute_bytes,
        "kv_per_layer_bytes": [cells * c for c in per_cell],
        "output_bytes": output,
    }


def auto_gpu_layers(
    shape: ModelShape,
    settings: ModelSettings,
    free_device_bytes: int,
    *,
    parallel: int | None = None,
    margin_bytes: int = 0,
) -> int:
    """``n_gpu_layers="auto"``: as many layers as fit the device's free memory."""
    return plan_offload(
        **offload_inputs(shape, settings, parallel=parallel),
        free_device_bytes=free_device_bytes,
        margin_bytes=margin_bytes,
    )


def offload_split(
    shape: ModelShape,
    settings: ModelSettings,
    device_memory_bytes: int,
    *,
    cpu_features: frozenset[str] = frozenset(),
    parallel: int | None = None,
) -> dict[str, Any]:
    """The host/device split of ``n_gpu_layers="auto"`` on a device with that much free memory
    (``plan --device-memory``): bytes per side, from the estimator with the chosen layer count."""
    import dataclasses

    from .scheduler.estimate import estimate

    n = auto_gpu_layers(shape, settings, device_memory_bytes, parallel=parallel)
    extra: dict[str, Any] = {} if parallel is None else {"parallel": parallel}
    placed = dataclasses.replace(settings, n_gpu_layers=n)
    est = estimate(shape, placed, cpu_features=cpu_features, gpu=True, **extra)
    return {
        "device_memory_bytes": device_memory_bytes,
        "n_gpu_layers": n,
        "n_layers": shape.n_layer,
        "output_on_device": n > shape.n_layer,
        "host_bytes": est.total_bytes,
        "device_bytes": est.device_bytes,
        "device_weights_bytes": est.device_weights_bytes,
        "device_kv_bytes": est.device_kv_bytes,
        "device_compute_bytes": est.device_compute_bytes,
    }


def format_offload(split: dict[str, Any]) -> str:
    """One line for ``plan``: how many layers go to the device, and the bytes on each side."""
    mib = 2**20
    layers = min(split["n_gpu_layers"], split["n_layers"])
    output = " + output" if split["output_on_device"] else ""
    return (
        f"offload to a device with {split['device_memory_bytes'] / mib:,.0f} MiB free: "
        f"{layers}/{split['n_layers']} layers{output} -> device {split['device_bytes'] / mib:,.1f} MiB "
        f"(weights {split['device_weights_bytes'] / mib:,.1f}, KV {split['device_kv_bytes'] / mib:,.1f}, "
        f"compute {split['device_compute_bytes'] / mib:,.1f}), host {split['host_bytes'] / mib:,.1f} MiB"
    )
