"""Qwen3-Embedding and Qwen3-Reranker checkpoints convert to GGUFs whose pooled output is the model's.

Tiny random checkpoints (scripts/make_tiny_checkpoints.py: ``qwen3-embedding``, the bare
``Qwen3Model`` with sentence-transformers' last-token pooling; ``qwen3-reranker``, a Qwen3 causal LM
named as a reranker), converted to F32, run by llama.cpp through its low-level bindings with the
pooling left to the GGUF, against an independent float64 numpy forward pass
(tests/numpy_reference.py's blocks):

* embedding: the final-norm hidden state of the last token (LAST pooling);
* reranker: llama.cpp's RANK pooling for qwen3 (src/llama-graph.cpp ``build_pooling``): the last
  token's state through ``cls.output`` (the "yes" and "no" rows of the output head), then
  ``ggml_soft_max``: [P(yes), P(no)].

Tolerance as in test_correctness.py for F32 GGUFs: 1e-4 of the largest reference value.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp.llama_cpp as L
import numpy as np
import pytest
from make_tiny_checkpoints import build_config, make_checkpoint, read_checkpoint
from numpy_reference import attention, load_spec, mlp, rms_norm, softmax

from edge_qwen._llama import capture_log
from edge_qwen.convert import convert
from edge_qwen.convert.architectures import load_hparams
from edge_qwen.convert.pooling import RERANK_TEMPLATE
from edge_qwen.convert.source import HUB_FILES
from edge_qwen.errors import CheckpointError

pytestmark = [pytest.mark.real, pytest.mark.slow]

F32_TOLERANCE = 1e-4
TEXT = "Binary search halves the interval at every step: def bisect(a, x):"
QUERY, DOCUMENT = "What is the capital of China?", "The capital of China is Beijing."


# --- the numpy reference ----------------------------------------------------------------------


def reference_hidden(folder: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 final-norm hidden states [tokens, n_embd] of the Qwen3 trunk, and the output head
    ([vocab, n_embd]: lm_head, or the token embeddings when tied; None for a bare model)."""
    cfg = json.loads((folder / "config.json").read_text())
    s = load_spec({**cfg, "architectures": ["Qwen3ForCausalLM"]})  # Qwen3Model: the same trunk
    bare = not any(n.startswith("model.") for n in read_checkpoint(folder))
    w = {(f"model.{n}" if bare else n): t.astype(np.float64) for n, t in read_checkpoint(folder).items()}
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(s.n_layer):
        p = f"model.layers.{i}"
        x = x + attention(rms_norm(x, w[f"{p}.input_layernorm.weight"], s.eps), w, f"{p}.self_attn", s)
        x = x + mlp(rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], s.eps), w, f"{p}.mlp")
    head = w["model.embed_tokens.weight"] if s.tied else w.get("lm_head.weight")
    return rms_norm(x, w["model.norm.weight"], s.eps), head


def token_id(folder: Path, token: str) -> int:
    """A token's id in tokenizer.json (as transformers' convert_tokens_to_ids)."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return int(data["model"]["vocab"][token])


# --- llama.cpp --------------------------------------------------------------------------------


@contextlib.contextmanager
def pooling_context(path: Path) -> Iterator[tuple[Any, Any]]:
    """(model, context) with embeddings on and the pooling the GGUF states (UNSPECIFIED)."""
    with capture_log() as log:
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        model = L.llama_model_load_from_file(os.fsencode(path), mparams)
        assert model, f"llama.cpp could not load {path}: {log.tail()}"
        try:
            cparams = L.llama_context_default_params()
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 256
            cparams.n_seq_max = 1
            cparams.n_threads = cparams.n_threads_batch = 2
            cparams.embeddings = True
            cparams.pooling_type = L.LLAMA_POOLING_TYPE_UNSPECIFIED
            cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cparams.type_k = cparams.type_v = 0  # GGML_TYPE_F32: an exact KV cache
            ctx = L.llama_init_from_model(model, cparams)
            assert ctx, f"llama.cpp could not create a context: {log.tail()}"
            try:
                yield model, ctx
            finally:
                L.llama_free(ctx)
        finally:
            L.llama_model_free(model)


def tokenize(model: Any, text: str) -> list[int]:
    vocab = L.llama_model_get_vocab(model)
    raw = text.encode("utf-8")
    buf = (L.llama_token * 512)()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, True)
    assert 0 < n <= len(buf)
    return list(buf[:n])


def pooled(model: Any, ctx: Any, tokens: list[int], width: int) -> np.ndarray:
    """Decode ``tokens`` as sequence 0 in one batch; its pooled output (``width`` floats)."""
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        assert L.llama_decode(ctx, batch) == 0
        ptr = L.llama_get_embeddings_seq(ctx, 0)
        assert ptr, "llama.cpp pooled nothing for sequence 0"
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (width,)).copy()
    finally:
        L.llama_batch_free(batch)


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape
    scale, error = np.abs(expected).max(), np.abs(actual - expected).max()
    assert error <= F32_TOLERANCE * scale, (
        f"{what}: max |llama.cpp - reference| = {error:.3g}, allowed {F32_TOLERANCE:g} x {scale:.3g}"
    )


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    out: dict[str, Any] = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml")
    }
    out["tensors"] = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    return out


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Any:
    """``tiny(arch, tied=None, **config) -> (checkpoint, F32 GGUF)``, cached for the module."""
    root = tmp_path_factory.mktemp("tiny-embedding")
    cache: dict[str, tuple[Path, Path]] = {}

    def make(arch: str, tied: bool | None = None, **config: Any) -> tuple[Path, Path]:
        key = f"{arch}-{tied}" + "".join(f"-{k}={v}" for k, v in sorted(config.items()))
        if key not in cache:
            folder = root / f"tiny-{arch}-{len(cache)}"
            ck = make_checkpoint(
                folder, arch=arch, dtype="f32", tied=tied, tokenizer_dir=qwen3_tokenizer_dir, **config
            )
            result = convert(ck, root / f"out-{len(cache)}", outtype="f32", evaluate=False, quiet=True)
            cache[key] = (ck, result.gguf)
        return cache[key]

    return make


# --- embeddings -------------------------------------------------------------------------------


@pytest.mark.parametrize("hf_arch", ["Qwen3Model", "Qwen3ForCausalLM"])
def test_embedding_is_the_last_tokens_hidden_state(tiny: Any, hf_arch: str) -> None:
    """Qwen3Model, and the hub releases' layout: config.json says Qwen3ForCausalLM, the tensors are
    the bare model's (sentence-transformers saved them)."""
    checkpoint, path = tiny("qwen3-embedding", architectures=[hf_arch])
    meta = fields(path)
    assert meta["general.architecture"] == "qwen3"
    assert meta["qwen3.pooling_type"] == gguf.PoolingType.LAST
    assert "qwen3.classifier.output_labels" not in meta and "cls.output.weight" not in meta["tensors"]
    assert "output.weight" not in meta["tensors"]  # a bare model has no head: token_embd is reused
    with pooling_context(path) as (model, ctx):
        assert L.llama_pooling_type(ctx) == L.LLAMA_POOLING_TYPE_LAST
        tokens = tokenize(model, TEXT)
        actual = pooled(model, ctx, tokens, L.llama_model_n_embd(model))
    hidden, _ = reference_hidden(checkpoint, tokens)
    assert_close(actual, hidden[-1], "last-token embedding")
    # not vacuous: another token's state (or the mean) is far from it
    assert np.abs(hidden.mean(axis=0) - hidden[-1]).max() > 100 * F32_TOLERANCE * np.abs(hidden[-1]).max()


# --- reranker ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [None, False])  # Qwen3-Reranker-0.6B/4B tie the head; 8B does not
def test_reranker_scores_yes_and_no(tiny: Any, tied: bool | None) -> None:
    checkpoint, path = tiny("qwen3-reranker", tied=tied)
    meta = fields(path)
    assert meta["qwen3.pooling_type"] == gguf.PoolingType.RANK
    assert meta["qwen3.classifier.output_labels"] == ["yes", "no"]
    assert meta["tokenizer.chat_templates"] == ["rerank"]
    assert meta["tokenizer.chat_template.rerank"] == RERANK_TEMPLATE
    assert "tokenizer.chat_template" in meta  # the chat template stays beside the named one
    assert meta["tensors"]["cls.output.weight"] == (2, 64)
    # llama.cpp's converter writes an untied head only as cls.output
    assert "output.weight" not in meta["tensors"]

    yes, no = token_id(checkpoint, "yes"), token_id(checkpoint, "no")
    with pooling_context(path) as (model, ctx):
        assert L.llama_pooling_type(ctx) == L.LLAMA_POOLING_TYPE_RANK
        assert L.llama_model_n_cls_out(model) == 2
        assert [L.llama_model_cls_label(model, i) for i in range(2)] == [b"yes", b"no"]
        template = L.llama_model_chat_template(model, b"rerank").decode("utf-8")
        tokens = tokenize(model, template.format(query=QUERY, document=DOCUMENT))
        actual = pooled(model, ctx, tokens, 2)
    hidden, head = reference_hidden(checkpoint, tokens)
    assert head is not None
    logits = head[[yes, no]] @ hidden[-1]
    expected = softmax(logits)
    assert_close(actual, expected, "rerank [P(yes), P(no)]")
    assert abs(logits[0] - logits[1]) > 0.05, "the tiny model barely separates yes from no"


# --- metadata and refusals (config only: nothing is converted) --------------------------------


def write_config(folder: Path, arch: str = "qwen3-embedding", **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(build_config(arch, "f32", None, config)))
    return folder


def write_pooling(folder: Path, pooling: dict[str, Any], modules: list[dict[str, Any]] | None = None) -> None:
    modules = modules or [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))


@pytest.mark.parametrize(
    ("pooling", "kind"),
    [
        ({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}, gguf.PoolingType.LAST),
        ({"pooling_mode_mean_tokens": True}, gguf.PoolingType.MEAN),
        ({"pooling_mode_cls_token": True, "pooling_mode_lasttoken": False}, gguf.PoolingType.CLS),
        ({"pooling_mode": "lasttoken"}, gguf.PoolingType.LAST),
    ],
)
def test_pooling_modes_as_llama_cpp_reads_them(
    tmp_path: Path, pooling: dict[str, Any], kind: gguf.PoolingType
) -> None:
    folder = write_config(tmp_path / "ck")
    write_pooling(folder, pooling)
    hp = load_hparams(folder)
    assert hp.pooling is not None and hp.pooling.kind == kind


@pytest.mark.parametrize(
    ("pooling", "modules", "words"),
    [
        ({"pooling_mode_max_tokens": True}, None, "max_tokens"),
        ({"pooling_mode_weightedmean_tokens": True}, None, "weightedmean_tokens"),
        (
            {"pooling_mode_lasttoken": True},
            [{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
            "Dense",
        ),
    ],
)
def test_unknown_pooling_is_one_clear_line(
    tmp_path: Path, pooling: dict[str, Any], modules: list[dict[str, Any]] | None, words: str
) -> None:
    folder = write_config(tmp_path / "ck")
    write_pooling(folder, pooling, modules)
    with pytest.raises(CheckpointError) as refused:
        convert(folder, tmp_path / "out", outtype="f32", evaluate=False, quiet=True)
    message = str(refused.value)
    assert words in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_pooling_config_is_refused(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "ck")
    write_pooling(folder, {"pooling_mode_lasttoken": True})
    shutil.rmtree(folder / "1_Pooling")
    with pytest.raises(CheckpointError, match="1_Pooling"):
        load_hparams(folder)


def test_reranker_is_recognised_as_llama_cpp_does(tmp_path: Path) -> None:
    plain = write_config(tmp_path / "plain", "qwen3")
    assert load_hparams(plain).pooling is None  # a chat model stays one
    # the hub repo's name (a hub snapshot's folder is named by its commit)
    hub = load_hparams(plain, aliases=["Qwen3-Reranker-4B"])
    assert hub.pooling is not None and hub.pooling.rank
    (plain / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Qwen3-Reranker-0.6B\n")
    card = load_hparams(plain).pooling
    assert card is not None and card.kind == gguf.PoolingType.RANK and card.labels == ("yes", "no")
    by_name = write_config(tmp_path / "tiny-qwen3-reranker", "qwen3")
    assert load_hparams(by_name).pooling is not None
    named = write_config(tmp_path / "ck", "qwen3-reranker")  # _name_or_path
    assert load_hparams(named).pooling is not None


def test_hub_download_takes_the_pooling_files() -> None:
    for file in ("modules.json", "1_Pooling/config.json"):
        assert any(fnmatch.fnmatch(file, pattern) for pattern in HUB_FILES), file


# --- the same GGUFs through edge-qwen's step loop ---------------------------------------------

EXACT = {"n_ctx": 512, "n_threads": 2, "cache_type_k": "f32", "cache_type_v": "f32", "flash_attn": False}


def test_model_embed_returns_the_reference_embedding_batched_and_normalised(tiny: Any) -> None:
    """``Model.embed`` on the converted Qwen3-Embedding: the GGUF's LAST pooling is picked up, the
    rows are the reference's last-token states (several texts prefilled together), L2-normalised."""
    from edge_qwen.runtime import Model

    checkpoint, path = tiny("qwen3-embedding", architectures=["Qwen3Model"])
    texts = [TEXT, "Another text about lists.", "x"]
    with Model.load(path, **EXACT, parallel=3) as model:
        assert model.pooling == "last"
        raw = model.embed(texts, normalize=False)
        rows = model.embed(texts)
        token_lists = [list(s.tokens) for s in model.prepare_embeddings(texts)]
    for text, tokens, vector in zip(texts, token_lists, raw, strict=True):
        hidden, _ = reference_hidden(checkpoint, tokens)
        assert_close(vector.astype(np.float64), hidden[-1], f"Model.embed({text!r})")
    np.testing.assert_allclose(rows, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_model_rerank_is_the_reference_p_yes(tiny: Any) -> None:
    """``Model.rerank`` on the converted Qwen3-Reranker: the query and document go into the GGUF's
    rerank template as text, and each score is the reference's P(yes)."""
    from edge_qwen.runtime import Model

    checkpoint, path = tiny("qwen3-reranker")
    yes, no = token_id(checkpoint, "yes"), token_id(checkpoint, "no")
    documents = [DOCUMENT, "Paris is in France.", "Bananas are yellow."]
    with Model.load(path, **EXACT, parallel=2) as model:
        assert model.pooling == "rank"
        scores = model.rerank(QUERY, documents)
        token_lists = [list(s.tokens) for s in model.prepare_rerank(QUERY, documents)]
    for tokens, score in zip(token_lists, scores, strict=True):
        hidden, head = reference_hidden(checkpoint, tokens)
        assert head is not None
        expected = softmax(head[[yes, no]] @ hidden[-1])[0]
        assert abs(score - expected) <= F32_TOLERANCE, (score, expected)
    assert len({round(score, 6) for score in scores}) == 3  # each document its own score
