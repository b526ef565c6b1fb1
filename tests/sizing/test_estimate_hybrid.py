"""The estimator on a hybrid (Qwen3.5's Gated DeltaNet + gated attention) against llama.cpp's own
buffers: KV only for the attention layers, a fixed recurrent state per sequence for the others,
and an MTP layer that is not loaded counted nowhere. Tiny random-weight ``qwen35`` GGUFs from
scripts/make_hybrid_gguf.py (3 recurrent layers, 1 attention layer)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_estimate import reported_buffers

from edge_qwen.gguf_header import read_header
from edge_qwen.sizing import estimate_memory
from edge_qwen.sizing.estimate import model_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_hybrid_gguf import HybridDims, write_hybrid_gguf  # noqa: E402

MiB = 2**20


@pytest.fixture(scope="module", params=[0, 1], ids=["trunk", "with-mtp"])
def hybrid(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hybrid_gguf(tmp_path_factory.mktemp("hybrid") / "h.gguf", HybridDims(nextn=request.param))


def test_the_header_says_which_layers_are_recurrent(hybrid: Path) -> None:
    shape = model_shape(read_header(hybrid))
    assert shape.n_layer == 4 and shape.recurrent_layers == [0, 1, 2] and shape.attention_layers == [3]
    assert shape.state_r_elements == 3 * (64 + 2 * 2 * 16)  # (d_conv - 1) x conv channels
    assert shape.state_s_elements == 16 * 64  # d_state x d_inner


@pytest.mark.parametrize(("n_ctx", "parallel", "snapshots"), [(1024, 1, 4), (4096, 3, 4), (16384, 2, 0)])
def test_kv_recurrent_and_weights_are_llama_cpps_buffers(
    hybrid: Path, n_ctx: int, parallel: int, snapshots: int
) -> None:
    settings = {"n_ctx": n_ctx, "parallel": parallel, "recurrent_snapshots": snapshots}
    reported = reported_buffers(hybrid, n_threads=1, **settings)
    est = estimate_memory(hybrid, **settings)
    assert est.kv_bytes / MiB == pytest.approx(reported["KV"], abs=0.006)  # llama.cpp logs 2 decimals
    assert est.recurrent_bytes / MiB == pytest.approx(reported["RS"], abs=0.006)
    assert est.weights_bytes / MiB == pytest.approx(reported["model"], abs=0.006)
    # f32 state per sequence and rollback snapshot (n_rs_seq), whatever n_ctx
    assert est.recurrent_bytes == 3 * parallel * (384 + 1024) * 4 * (1 + snapshots)


def test_checkpoints_are_charged_as_copies_of_the_state(hybrid: Path) -> None:
    state = 3 * (384 + 1024) * 4  # one sequence's recurrent state: what a checkpoint holds
    assert estimate_memory(hybrid, parallel=2, ctx_checkpoints=4).checkpoint_bytes == 2 * 4 * state
    assert estimate_memory(hybrid, parallel=2, ctx_checkpoints=0).checkpoint_bytes == 0


def test_the_mtp_head_is_its_layer_and_one_layer_of_kv(hybrid_gguf) -> None:
    """With mtp=True llama.cpp loads the nextn layer and creates the MTP context: the model buffer
    grows by that layer's tensors, the K/V by one attention layer over the same cells."""
    path = hybrid_gguf("qwen35")
    settings = {"n_ctx": 2048, "parallel": 2}
    off = estimate_memory(path, **settings)
    on = estimate_memory(path, mtp=True, **settings)
    reported = reported_buffers(path, n_threads=1, mtp=True, **settings)
    assert off.mtp_weights_bytes == off.mtp_kv_bytes == 0
    assert on.mtp_kv_bytes == off.kv_bytes  # the trunk of this tiny model has one attention layer too
    assert (on.kv_bytes + on.mtp_kv_bytes) / MiB == pytest.approx(reported["KV"], abs=0.011)
    assert (on.weights_bytes + on.mtp_weights_bytes) / MiB == pytest.approx(reported["model"], rel=0.03)
