"""Chat request bodies with image and audio parts: valid shapes pass to the runtime in OpenAI
form, hostile or malformed ones are validation errors (the server's 400), never crashes."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

pytest.importorskip("pydantic")

from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from edge_qwen.errors import LocalMediaRefusedError, RemoteMediaError  # noqa: E402
from edge_qwen.runtime.media.content import SERVER_POLICY, extract_media  # noqa: E402
from edge_qwen.server.schemas import ChatCompletionRequest, ChatMessage  # noqa: E402


def png_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request(*parts: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "qwen2-vl", "messages": [{"role": "user", "content": list(parts)}]}
    )


def test_plain_text_is_unchanged() -> None:
    message = ChatMessage.model_validate({"role": "developer", "content": "Be brief."})
    assert message.to_template() == {"role": "system", "content": "Be brief."}
    parts = ChatMessage.model_validate({"role": "user", "content": [{"type": "text", "text": "a"}] * 2})
    assert parts.text() == "aa" and parts.to_template()["content"] == "aa" and not parts.has_media


def test_image_and_audio_parts_reach_the_runtime_in_openai_shape() -> None:
    url = png_url()
    body = request(
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
        {"type": "image_url", "image_url": url},  # string shorthand, normalised
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    )
    message = body.messages[0]
    assert message.has_media
    assert message.to_template()["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    with pytest.raises(ValueError, match="image or audio"):
        message.text()


def test_the_runtime_decodes_what_the_schema_passes() -> None:
    body = request({"type": "image_url", "image_url": {"url": png_url()}}, {"type": "text", "text": "?"})
    prompt = extract_media(
        [m.to_template() for m in body.messages], marker="<__media__>", policy=SERVER_POLICY
    )
    assert prompt.messages[0]["content"] == "<__media__>?" and prompt.items[0].array.shape == (6, 8, 3)


@pytest.mark.parametrize(
    ("url", "error"),
    [("https://example.com/a.png", RemoteMediaError), ("file:///etc/passwd", LocalMediaRefusedError)],
)
def test_urls_the_server_must_not_follow_are_refused_by_the_runtime(url: str, error: type[Exception]) -> None:
    body = request({"type": "image_url", "image_url": {"url": url}})
    with pytest.raises(error):
        extract_media([m.to_template() for m in body.messages], marker="<__media__>", policy=SERVER_POLICY)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url"},
        {"type": "image_url", "image_url": {"url": ""}},
        {"type": "image_url", "image_url": {"url": 42}},
        {"type": "image_url", "image_url": ["data:image/png;base64,AAAA"]},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}},
        {"type": "input_audio", "input_audio": {"format": "wav"}},
        {"type": "input_audio", "input_audio": "AAAA"},
        {"type": "text"},
        {"type": "text", "text": {"nested": "object"}},
        {"type": "video_url", "video_url": {"url": "x"}},
        {"type": "image", "image": "/etc/passwd"},  # Python API only
        {"no_type": True},
        "just a string",
        None,
    ],
)
def test_malformed_parts_are_validation_errors(part: Any) -> None:
    with pytest.raises(ValidationError):
        request(part)
