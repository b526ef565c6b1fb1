"""How the loader places layers: ``n_gpu_layers="auto"`` asks the build and the device; a CPU-only
build offloads nothing and reads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_qwen.errors import ConfigError
from edge_qwen.gguf_header import read_header
from edge_qwen.runtime.loader import AUTO_MARGIN, gpu_layers
from edge_qwen.settings import ModelSettings
from edge_qwen.sizing.estimate import model_shape
from edge_qwen.sizing.offload import auto_gpu_layers


def test_auto_on_a_cpu_build_offloads_nothing(real_gguf: Path) -> None:
    """Even though llama.cpp says a build with RPC "supports GPU offload": a GPU of this machine
    decides (``backends.local_gpus``), and every build here has RPC."""
    import llama_cpp.llama_cpp as L

    from edge_qwen.backends import local_gpus

    if local_gpus():
        pytest.skip("this machine has a GPU")
    assert L.llama_supports_gpu_offload() and L.llama_supports_rpc()
    assert gpu_layers(real_gguf, ModelSettings()) == 0
    assert gpu_layers(real_gguf, ModelSettings(n_gpu_layers=12)) == 12


def test_auto_fits_the_layers_to_the_device(real_gguf: Path) -> None:
    shape = model_shape(read_header(real_gguf))
    settings = ModelSettings(n_ctx=4096)
    mib = 2**20
    assert auto_gpu_layers(shape, settings, 64 * mib, margin_bytes=AUTO_MARGIN) == 0
    some = auto_gpu_layers(shape, settings, 700 * mib, margin_bytes=AUTO_MARGIN)
    assert 0 < some < shape.n_layer
    assert auto_gpu_layers(shape, settings, 8 * 1024 * mib, margin_bytes=AUTO_MARGIN) == shape.n_layer + 1


def test_a_bad_value_is_refused(real_gguf: Path) -> None:
    with pytest.raises(ConfigError, match="n_gpu_layers"):
        gpu_layers(real_gguf, ModelSettings(n_gpu_layers="most"))


@pytest.mark.real
def test_model_load_and_scheduler_add_take_registry_names_like_the_cli(real_gguf: Path) -> None:
    """``Model.load("qwen2.5-coder-0.5b-instruct")`` finds the pulled file, as ``edge-qwen run`` does."""
    from edge_qwen import Model, Scheduler

    with Model.load("qwen2.5-coder-0.5b-instruct", n_ctx=256, n_threads=1) as model:
        assert model.path == real_gguf
    with Scheduler(budget="2GB") as sched:
        sched.add("coder", "qwen2.5-coder-0.5b-instruct:q4_k_m", n_ctx=256)
        assert sched.snapshot().model("coder").path == str(real_gguf)
