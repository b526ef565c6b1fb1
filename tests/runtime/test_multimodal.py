"""Images and audio through Model.chat on tiny random Qwen2-VL and Qwen2-Audio pairs (real Qwen3
tokenizer, converted by edge-qwen): the step loop feeds mtmd's chunks with M-RoPE positions and gives
the answer llama.cpp's own mtmd helper path gives; a follow-up turn reuses the cached image; several
images decode concurrently; text-only requests are unchanged; bad media is refused clearly.

The reference (tests/convert/_mtmd.py) is a separate context driven by ``mtmd_helper_eval_chunks``
and a greedy loop; both sides use an F32 KV cache and F32 weights so greedy ties cannot part them.
The converters' own tests prove that pair against an independent numpy forward pass.
"""

from __future__ import annotations

import base64
import io
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_qwen.errors import ChatTemplateError, MediaError, MediaTooLargeError
from edge_qwen.runtime import Model
from edge_qwen.runtime.handles import drain
from edge_qwen.runtime.media.content import MediaLimits, MediaPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from _mtmd import decode_all, loaded  # noqa: E402
from make_tiny_multimodal import make_multimodal_checkpoint, random_audio, random_image  # noqa: E402

from edge_qwen.convert import convert  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]
EXACT = {"cache_type_k": "f32", "cache_type_v": "f32", "flash_attn": False, "n_threads": 2}


def png_url(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask_image(img: np.ndarray, text: str = "What is in this picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": png_url(img)}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def vl_pair(tiny_vl_pair: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_vl_pair


@pytest.fixture(scope="module")
def vl(vl_pair: tuple[Path, Path]) -> Iterator[Model]:
    gguf, mmproj = vl_pair
    with Model.load(gguf, mmproj=mmproj, n_ctx=2048, parallel=3, **EXACT) as model:
        yield model


def reference_answer(vl_pair: tuple[Path, Path], model: Model, messages: list[dict], n: int) -> list[int]:
    """Greedy tokens from llama.cpp's own path: the rendered prompt through ``mtmd_tokenize`` and
    ``mtmd_helper_eval_chunks`` into a fresh context, then one token at a time."""
    gguf, mmproj = vl_pair
    urls = [p["image_url"]["url"] for m in messages if isinstance(m["content"], list) for p in m["content"]
            if p["type"] == "image_url"]  # fmt: skip
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",")[1])))) for url in urls]
    with loaded(gguf, mmproj) as (lmodel, ctx, mtmd):
        text_messages = [
            {**m, "content": "".join(mtmd.marker if p["type"] != "text" else p["text"] for p in m["content"])}
            if isinstance(m["content"], list) else m
            for m in messages
        ]  # fmt: skip
        with mtmd.tokenize(model.render(text_messages).text, images) as chunks:
            n_past = mtmd.eval_chunks(ctx, chunks, 0, logits_last=True)
            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(lmodel)
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(ctx, -1), shape=(llama_cpp.llama_vocab_n_tokens(vocab),)
            )
            out = [int(logits.argmax())]
            while len(out) < n and not llama_cpp.llama_vocab_is_eog(vocab, out[-1]):
                out.append(int(decode_all(ctx, lmodel, (out[-1],), n_past)[-1].argmax()))
                n_past += 1
            if llama_cpp.llama_vocab_is_eog(vocab, out[-1]):
                out.pop()  # the end of the answer is not part of it
    return out


def test_an_image_answer_is_llama_cpps_own(vl: Model, vl_pair: tuple[Path, Path]) -> None:
    vl.reset()
    messages = ask_image(random_image(168, 112))
    result = vl.chat(messages, temperature=0, max_tokens=12)
    assert list(result.token_ids) == reference_answer(vl_pair, vl, messages, 12)
    # 168x112 pixels: 12x8 patches, merged 2x2 into 6x4 = 24 image tokens around the text
    text_only = vl.prompt_tokens(vl.render([{"role": "user", "content": "What is in this picture?"}]))
    assert result.usage.prompt_tokens == len(text_only) + 2 + 24  # + <|vision_start|>, <|vision_end|>


def test_a_follow_up_turn_reuses_the_cached_image(vl: Model) -> None:
    vl.reset()
    first_turn = ask_image(random_image(168, 112, seed=1))
    before = vl._engine.stats.media_chunks
    first = vl.chat(first_turn, temperature=0, max_tokens=6)
    follow_up = [
        *first_turn,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Sure?"},
    ]
    second = vl.chat(follow_up, temperature=0, max_tokens=6)
    assert vl._engine.stats.media_chunks == before + 1  # encoded once
    assert second.usage.cached_tokens >= first.usage.prompt_tokens  # the image's cells included
    other = vl.chat(ask_image(random_image(168, 112, seed=2)), temperature=0, max_tokens=2)
    assert vl._engine.stats.media_chunks == before + 2 and other.usage.cached_tokens < 10


def test_images_in_concurrent_requests_get_their_own_answers(vl: Model) -> None:
    conversations = [ask_image(random_image(112 + 28 * i, 112, seed=10 + i)) for i in range(3)]
    alone = []
    for c in conversations:
        vl.reset()
        alone.append(vl.chat(c, temperature=0, max_tokens=8).token_ids)
    vl.reset()
    streams = [vl.chat_stream(c, temperature=0, max_tokens=8) for c in conversations]
    assert [drain(s).token_ids for s in streams] == alone
    assert len(set(alone)) > 1  # the images matter


def test_text_only_requests_are_unchanged(vl: Model, vl_pair: tuple[Path, Path]) -> None:
    hi = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}
    ]
    vl.reset()
    with_projector = vl.chat(hi, temperature=0, max_tokens=8)
    with Model.load(vl_pair[0], n_ctx=2048, parallel=1, **EXACT) as text_model:
        assert text_model.chat(hi, temperature=0, max_tokens=8).token_ids == with_projector.token_ids
        with pytest.raises(ChatTemplateError, match="mmproj"):
            text_model.chat(ask_image(random_image(56, 56)), max_tokens=2)


def test_bad_media_is_refused_with_the_way_out(vl: Model) -> None:
    broken = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        }
    ]
    with pytest.raises(MediaError):
        vl.chat(broken, max_tokens=2)
    with pytest.raises(MediaError, match="not fetched.*data URL"):
        vl.chat(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}],
                }
            ]
        )
    tight = MediaPolicy(limits=MediaLimits(max_pixels=1000))
    with pytest.raises(MediaTooLargeError):
        vl.chat(ask_image(random_image(112, 112)), media_policy=tight, max_tokens=2)
    assert vl.chat(ask_image(random_image(56, 56)), max_tokens=2).usage.completion_tokens >= 1  # still fine


@pytest.fixture(scope="module")
def audio_pair(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runtime-audio")
    ck = make_multimodal_checkpoint(root / "ck", arch="qwen2audio", tokenizer_dir=qwen3_tokenizer_dir)
    out = convert(ck, root / "out", outtype="f32", evaluate=False, quiet=True).as_dict()
    return Path(out["gguf"]), Path(out["mmproj"]["path"])


def wav_base64(pcm: np.ndarray, rate: int) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def test_an_audio_clip_is_heard(audio_pair: tuple[Path, Path]) -> None:
    gguf, mmproj = audio_pair
    clip = random_audio(2.0)
    with Model.load(gguf, mmproj=mmproj, n_ctx=2048, parallel=1, **EXACT) as model:
        part = {"type": "input_audio", "input_audio": {"data": wav_base64(clip, 16000), "format": "wav"}}
        ask = [{"role": "user", "content": [part, {"type": "text", "text": "What was said?"}]}]
        result = model.chat(ask, temperature=0, max_tokens=4)
        text_only = model.chat([{"role": "user", "content": "What was said?"}], temperature=0, max_tokens=4)
        assert model._engine.stats.media_chunks == 1
        assert result.usage.prompt_tokens > text_only.usage.prompt_tokens + 20  # the clip's tokens


def test_prompt_lookup_with_an_image_answers_as_without(vl: Model) -> None:
    messages = ask_image(random_image(112, 84, seed=20), "Describe it. Describe it. Describe it.")
    vl.reset()
    plain = vl.chat(messages, temperature=0, max_tokens=16)
    vl.reset()
    assert vl.chat(messages, temperature=0, max_tokens=16, speculative="lookup").token_ids == plain.token_ids
