"""``/v1/embeddings`` through the real ``openai`` client, and ``/v1/rerank``, on 127.0.0.1."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serverutil import running_server

from edge_qwen.scheduler import Scheduler
from edge_qwen.server import SchedulerProvider, ServerConfig

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.real]
TEXTS = ["binary search in Python", "sorting a list", "the weather in Paris"]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    """A tiny random-weight Qwen3-Reranker, converted (its scores mean nothing; their order is checked)."""
    from make_tiny_checkpoints import make_checkpoint

    from edge_qwen.convert import convert

    root = tmp_path_factory.mktemp("reranker")
    checkpoint = make_checkpoint(root / "tiny-qwen3-reranker", arch="qwen3-reranker", dtype="f32",
                                 tokenizer_dir=qwen3_tokenizer_dir)  # fmt: skip
    return convert(checkpoint, root / "out", outtype="f32", evaluate=False, quiet=True).gguf


@pytest.fixture(scope="module")
def url(real_gguf: Path, reranker: Path) -> Iterator[str]:
    scheduler = Scheduler(None)
    scheduler.add("embed", real_gguf, n_ctx=1024, n_threads=2, parallel=4, pooling="last")
    scheduler.add("chat", real_gguf, n_ctx=512, n_threads=1, parallel=1)
    scheduler.add("rerank", reranker, n_ctx=512, n_threads=1, parallel=2)
    provider = SchedulerProvider(scheduler, max_waiting=16)
    try:
        with running_server(provider, ServerConfig()) as base:
            yield base
    finally:
        provider.close()


def test_embeddings_come_back_in_openai_shape_as_floats_or_base64(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    floats = client.embeddings.create(model="embed", input=TEXTS)
    assert [d.index for d in floats.data] == [0, 1, 2] and len(floats.data[0].embedding) == 896
    assert floats.usage.prompt_tokens > len(TEXTS)
    rows = np.array([d.embedding for d in floats.data])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    body = {"model": "embed", "input": TEXTS, "encoding_format": "base64"}
    raw = httpx.post(url + "/v1/embeddings", json=body, timeout=60)
    packed = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.json()["data"]]
    assert (np.sum(np.vstack(packed) * rows, axis=1) > 0.999).all()
    cut = client.embeddings.create(model="embed", input="sorting a list", dimensions=64)
    assert len(cut.data[0].embedding) == 64 and abs(np.linalg.norm(cut.data[0].embedding) - 1) < 1e-5


def test_a_chat_model_asked_for_embeddings_and_bad_inputs_are_400s(url: str) -> None:
    def post(body: dict) -> httpx.Response:
        return httpx.post(url + "/v1/embeddings", json=body, timeout=60)

    assert "does not embed" in post({"model": "chat", "input": "x"}).json()["error"]["message"]
    assert post({"model": "embed", "input": ["x"] * 300}).status_code == 400
    assert post({"model": "embed", "input": []}).status_code == 400
    assert post({"model": "embed", "input": [1, 2, 3]}).status_code == 400
    too_long = post({"model": "embed", "input": "word " * 3000})
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    rerank = httpx.post(url + "/v1/rerank", json={"model": "embed", "query": "q", "documents": ["d"]})
    assert rerank.status_code == 400 and "does not rank" in rerank.json()["error"]["message"]


def test_rerank_orders_the_documents_by_the_models_scores(url: str, reranker: Path) -> None:
    from edge_qwen.runtime import Model

    query, documents = "What is the capital of China?", ["Beijing is.", "Paris is in France.", "Bananas."]
    body = {"model": "rerank", "query": query, "documents": documents, "top_n": 2, "return_documents": True}
    ranked = httpx.post(url + "/v1/rerank", json=body, timeout=60).json()
    with Model.load(reranker, n_ctx=512, n_threads=1) as model:
        scores = model.rerank(query, documents)
        n_tokens = sum(len(s.tokens) for s in model.prepare_rerank(query, documents))
    best = sorted(range(3), key=lambda i: scores[i], reverse=True)[:2]
    assert [r["index"] for r in ranked["results"]] == best
    assert [r["document"]["text"] for r in ranked["results"]] == [documents[i] for i in best]
    assert all(abs(r["relevance_score"] - scores[r["index"]]) < 1e-3 for r in ranked["results"])
    assert ranked["usage"]["prompt_tokens"] == n_tokens and ranked["object"] == "list"
