"""Embeddings through the step loop on the real Qwen2.5-Coder-0.5B loaded with last-token pooling:
a list is embedded in one go across the slots, the same list gives the same rows, and each row is
the text's own embedding whichever batch it came in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_qwen.errors import ConfigError, ContextOverflowError
from edge_qwen.runtime import Model

pytestmark = [pytest.mark.real]
TEXTS = ["binary search in Python", "sorting a list", "the weather in Paris", "quick sort", "a" * 40]


@pytest.fixture(scope="module")
def embedder(real_gguf: Path) -> Iterator[Model]:
    with Model.load(real_gguf, n_ctx=2048, n_threads=2, parallel=4, pooling="last") as model:
        yield model


def test_a_list_is_embedded_deterministically_and_each_row_is_that_texts_own(embedder: Model) -> None:
    rows = embedder.embed(TEXTS)
    assert rows.shape == (len(TEXTS), 896) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    again = embedder.embed(TEXTS)  # now from the slots' cached prefixes: the last token alone
    alone = np.vstack([embedder.embed(t) for t in TEXTS])  # one at a time: other batch shapes
    for other in (again, alone):
        cosines = np.sum(other * rows, axis=1)
        assert (cosines > 0.999).all(), cosines
    raw = embedder.embed(TEXTS[0], normalize=False)
    assert np.linalg.norm(raw) > 1.5


def test_an_embedding_model_does_not_generate_and_a_chat_model_does_not_embed(
    embedder: Model, real_gguf: Path
) -> None:
    with pytest.raises(ConfigError, match="loaded to embed"):
        embedder.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ConfigError, match="does not rank"):
        embedder.rerank("q", ["d"])
    with pytest.raises(ContextOverflowError):
        embedder.embed("word " * 3000)
    with pytest.raises(ConfigError, match="non-empty string"):
        embedder.embed([""])
    with Model.load(real_gguf, n_ctx=512, n_threads=1) as chat:
        with pytest.raises(ConfigError, match="pooling='last'"):
            chat.embed("hello")
