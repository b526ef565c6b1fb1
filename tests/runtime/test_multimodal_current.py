"""Images through Model.chat on the current generation: a tiny Qwen3-VL pair (DeepStack: each image
token carries 3x the hidden size, added after the first layers) and a tiny Qwen3.5 pair (the hybrid
model: image chunks pass through the Gated DeltaNet state), both converted by edge-qwen. The step
loop's answer is llama.cpp's own mtmd helper path's, token for token; concurrent images keep apart;
a follow-up turn on Qwen3.5 reuses the image through a state checkpoint instead of re-encoding it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_multimodal import EXACT, ask_image, reference_answer

from edge_qwen.convert import convert
from edge_qwen.runtime import Model
from edge_qwen.runtime.handles import drain

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_tiny_qwen3vl import make_qwen3vl_checkpoint, random_image  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module", params=["qwen3vl", "qwen3vlmoe", "qwen35vl", "qwen35moevl"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    ck = make_qwen3vl_checkpoint(root / "ck", request.param, "f32")
    result = convert(ck, root / "out", outtype="f32", evaluate=False, quiet=True)
    assert result.mmproj is not None
    return result.gguf, Path(result.mmproj.path)


@pytest.fixture(scope="module")
def vl(pair: tuple[Path, Path]) -> Iterator[Model]:
    with Model.load(pair[0], mmproj=pair[1], n_ctx=2048, parallel=3, **EXACT) as model:
        yield model


def test_an_image_answer_is_llama_cpps_own(vl: Model, pair: tuple[Path, Path]) -> None:
    vl.reset()
    messages = ask_image(random_image(192, 128))
    result = vl.chat(messages, temperature=0, max_tokens=10)
    assert list(result.token_ids) == reference_answer(pair, vl, messages, 10)
    text_only = vl.prompt_tokens(vl.render([{"role": "user", "content": "What is in this picture?"}]))
    assert result.usage.prompt_tokens == len(text_only) + 2 + 24  # 12x8 patches merged 2x2


def test_images_in_concurrent_requests_get_their_own_answers(vl: Model) -> None:
    conversations = [ask_image(random_image(96 + 32 * i, 128, seed=10 + i)) for i in range(3)]
    alone = []
    for c in conversations:
        vl.reset()
        alone.append(vl.chat(c, temperature=0, max_tokens=8).token_ids)
    vl.reset()
    streams = [vl.chat_stream(c, temperature=0, max_tokens=8) for c in conversations]
    assert [drain(s).token_ids for s in streams] == alone
    assert len(set(alone)) > 1  # the images matter


def test_a_follow_up_turn_does_not_encode_the_image_again(vl: Model) -> None:
    vl.reset()
    first_turn = ask_image(random_image(192, 128, seed=1))
    before = vl._engine.stats.media_chunks
    first = vl.chat(first_turn, temperature=0, max_tokens=6)
    follow_up = [
        *first_turn,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Sure?"},
    ]
    second = vl.chat(follow_up, temperature=0, max_tokens=6)
    assert vl._engine.stats.media_chunks == before + 1  # encoded once
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1
