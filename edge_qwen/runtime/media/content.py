"""Images and audio in chat messages: OpenAI-shape content parts parsed, loaded under limits, and
the conversation split into template text (one placeholder per item) plus the decoded items.

Accepted parts (``content`` may also be a plain string)::

    {"type": "text", "text": "..."}
    {"type": "image_url", "image_url": {"url": URL}}        # or "image_url": URL
    {"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav" | "mp3"}}
    {"type": "image", "image": bytes | path | PIL.Image | uint8 [H, W, 3]}   # Python API
    {"type": "audio", "audio": bytes | path | float32 [samples]}             # Python API

URLs: ``data:image/...;base64,...`` always; a local path or ``file://`` only where
:class:`MediaPolicy` ``allow_local_files`` (the Python API, never the server); ``http(s)`` never:
unless the policy has a ``fetch`` (:mod:`~edge_qwen.runtime.media.media_fetch`, with its SSRF guard):
edge-qwen works offline, so by default the client sends a ``data:`` URL.

**Where the model's own markers come from.** libmtmd (``tools/mtmd/mtmd.cpp``) replaces each
``<__media__>`` marker in the prompt with chunks and adds the model's delimiters itself: for
``qwen2vl_merger``/``qwen2.5vl_merger`` projectors the text ``<|vision_start|>`` before the image
embeddings and ``<|vision_end|>`` after (``img_beg``/``img_end``); for ``qwen2a``
``<|audio_bos|>``/``<|audio_eos|>`` (``aud_beg``/``aud_end``). The embeddings take the place of
Qwen2-VL's ``<|image_pad|>`` run. So the prompt must carry the bare marker, *not* the template's
``<|vision_start|><|image_pad|><|vision_end|>``, or the delimiters appear twice. llama-server does
the same (``tools/server/server-common.cpp``, ``oaicompat_content_load_media``): each media part
becomes a marker text part and the content is flattened to a string before templating. Here parts
are joined with nothing between them, which is what Qwen2-VL's template renders for list content
(``<|vision_start|><|image_pad|><|vision_end|>`` directly followed by the text part), so the
final tokens equal transformers'. Qwen2-Audio's template also writes ``Audio 1: `` before each
clip and a newline after: :data:`QWEN2_AUDIO_PART_TEXT` reproduces that.

llama-server draws a random marker per process so user text cannot forge one; mtmd_native uses
the fixed default, so :func:`extract_media` refuses message text that contains the marker.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from ...errors import (
    MediaDecodeError,
    MediaMarkerError,
    MediaTooLargeError,
    UnsupportedMediaError,
)
from .media_audio import AudioDecoder, decode_wav, mp3_byte_limit, sniff_audio
from .media_image import IMAGE_FORMATS, decode_image, rgb_from_array, rgb_from_pil
from .media_source import check_size, read_source

AUDIO_FORMATS = frozenset({"wav", "mp3"})
DEFAULT_PART_TEXT: Mapping[str, str] = {"image": "{marker}", "audio": "{marker}"}
#: What Qwen2-Audio-Instruct's template writes around each clip ({n} counts clips from 1).
QWEN2_AUDIO_PART_TEXT: Mapping[str, str] = {"image": "{marker}", "audio": "Audio {n}: {marker}\n"}


@dataclass(frozen=True)
class MediaLimits:
    """What one request may send. Every limit refuses with :class:`MediaTooLargeError`."""

    max_bytes: int = 20 * 2**20  # encoded bytes of one item (after base64 decoding)
    max_items: int = 8  # images + audio clips per request
    max_pixels: int = 16 * 2**20  # width x height, checked from the header before decoding
    max_audio_seconds: float = 30.0  # Qwen2-Audio's encoder window
    image_formats: frozenset[str] = IMAGE_FORMATS
    audio_formats: frozenset[str] = AUDIO_FORMATS


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from. The server uses the default; the Python API allows local files.

    ``fetch(url, max_bytes)`` reads an ``http(s)`` URL; None (the default) refuses them. The one
    edge-qwen ships, :class:`~edge_qwen.runtime.media.media_fetch.RemoteFetcher`, refuses private,
    loopback and link-local addresses (SSRF) and is what ``serve --allow-remote-media`` installs.
    """

    allow_local_files: bool = False
    limits: MediaLimits = field(default_factory=MediaLimits)
    fetch: Callable[[str, int], bytes] | None = None


LOCAL_POLICY = MediaPolicy(allow_local_files=True)
SERVER_POLICY = MediaPolicy(allow_local_files=False)


@dataclass(frozen=True, eq=False)
class MediaItem:
    """One decoded image (uint8 RGB ``[H, W, 3]``) or clip (float32 mono ``[samples]``), read-only.

    ``digest`` is the sha256 of kind, dtype, shape, rate and the samples: identical content gives
    the same digest whatever the container (PNG vs. BMP), so it keys the prefix cache.
    """

    kind: Literal["image", "audio"]
    array: np.ndarray
    digest: str
    n_bytes: int  # encoded size (0 for arrays handed over directly)
    sample_rate: int | None = None  # audio only

    @property
    def seconds(self) -> float | None:
        return self.array.shape[0] / self.sample_rate if self.sample_rate else None


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    source: Any  # str URL/path, bytes, Path, PIL.Image.Image or numpy array


@dataclass(frozen=True)
class AudioPart:
    source: Any  # base64 str / data: URL / path, bytes, Path or float32 array
    format: str | None  # "wav" | "mp3"; None: sniffed


Part = TextPart | ImagePart | AudioPart


@dataclass(frozen=True)
class MediaPrompt:
    """Messages whose content is a string (one marker per item), and the items in marker order."""

    messages: list[dict[str, Any]]
    items: tuple[MediaItem, ...]


# --- content parts -----------------------------------------------------------------------------


def parse_content(content: Any) -> list[Part]:
    """``content`` (a string, None or a list of parts) as typed parts.

    Raises:
        UnsupportedMediaError: a part of an unknown type or shape.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list | tuple):
        raise UnsupportedMediaError(
            f"message content must be a string or a list of parts, not {content!r:.60}"
        )
    return [_parse_part(p) for p in content]


def _parse_part(part: Any) -> Part:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return TextPart(part["text"])
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, Mapping) else value
        if isinstance(url, str | bytes | os.PathLike):
            return ImagePart(url)
    if kind == "image" and part.get("image") is not None:
        return ImagePart(part["image"])
    if kind == "input_audio" and isinstance(part.get("input_audio"), Mapping):
        audio = part["input_audio"]
        if isinstance(audio.get("data"), str | bytes):
            return AudioPart(audio["data"], audio.get("format"))
    if kind == "audio" and part.get("audio") is not None:
        return AudioPart(part["audio"], part.get("format"))
    raise UnsupportedMediaError(
        f"content part {str(part)[:80]!r} is not understood; send {{'type': 'text', 'text': ...}}, "
        "{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}} or "
        "{'type': 'input_audio', 'input_audio': {'data': BASE64, 'format': 'wav'}}"
    )


def extract_media(
    messages: Sequence[Mapping[str, Any]],
    *,
    marker: str,
    policy: MediaPolicy = SERVER_POLICY,
    sample_rate: int | None = None,
    mp3_decoder: AudioDecoder | None = None,
    part_text: Mapping[str, str] = DEFAULT_PART_TEXT,
) -> MediaPrompt:
    """Replace every media part by ``part_text[kind]`` (``{marker}`` → ``marker``) and load it.

    Text parts are joined with nothing between them; messages without media keep their content.
    ``sample_rate`` is the audio encoder's rate (``Mtmd.sample_rate``); ``mp3_decoder`` comes from
    :func:`~edge_qwen.runtime.media.media_audio.mtmd_mp3_decoder`.

    Raises:
        MediaTooLargeError: more than ``max_items`` media parts, or one item over a limit.
        MediaMarkerError: message text contains ``marker``.
        MediaError: any other refusal of :func:`load_image` / :func:`load_audio`.
    """
    parsed = [parse_content(m.get("content")) for m in messages]
    n_media = sum(not isinstance(p, TextPart) for parts in parsed for p in parts)
    if n_media > policy.limits.max_items:
        raise MediaTooLargeError(
            "the number of images and audio clips",
            n_media,
            policy.limits.max_items,
            "send fewer per request (e.g. one turn at a time)",
        )
    out: list[dict[str, Any]] = []
    items: list[MediaItem] = []
    counts = {"image": 0, "audio": 0}
    for message, parts in zip(messages, parsed, strict=True):
        if any(isinstance(p, TextPart) and marker in p.text for p in parts):
            raise MediaMarkerError(
                f"message text contains the media placeholder {marker!r}; remove it from the text "
                "(images and audio go in their own content parts)"
            )
        if isinstance(message.get("content"), str) or all(isinstance(p, TextPart) for p in parts):
            out.append(_with_content(message, "".join(p.text for p in parts if isinstance(p, TextPart))))
            continue
        pieces: list[str] = []
        for part in parts:
            if isinstance(part, TextPart):
                pieces.append(part.text)
                continue
            item = (
                load_image(part.source, policy=policy)
                if isinstance(part, ImagePart)
                else load_audio(
                    part.source, part.format, sample_rate=sample_rate, policy=policy, mp3_decoder=mp3_decoder
                )
            )
            counts[item.kind] += 1
            pieces.append(part_text[item.kind].format(marker=marker, n=counts[item.kind]))
            items.append(item)
        out.append(_with_content(message, "".join(pieces)))
    return MediaPrompt(out, tuple(items))


def _with_content(message: Mapping[str, Any], text: str) -> dict[str, Any]:
    return {**message, "content": text}


def split_at_markers(
    segments: Sequence[tuple[str, bool]], marker: str, n_items: int
) -> list[tuple[str, bool] | int]:
    """A rendered prompt's segments split at the markers: ``(text, parse_special)`` pieces as they
    are, and the item index where each marker was, so text keeps its control-token protection.

    Raises:
        MediaMarkerError: the markers do not number ``n_items`` (the template dropped or repeated
            a media part, or a tool definition contains the marker).
    """
    pieces: list[Any] = []
    index = 0
    for text, special in segments:
        for j, chunk in enumerate(text.split(marker)):
            if j:
                pieces.append(index)
                index += 1
            if chunk:
                pieces.append((chunk, special))
    if index != n_items:
        raise MediaMarkerError(
            f"the rendered prompt has {index} media placeholders for {n_items} media items; the chat "
            "template dropped or repeated a media part; use the model's own template"
        )
    return pieces


# --- sources -----------------------------------------------------------------------------------


def _digest(kind: str, array: np.ndarray, rate: int | None = None) -> str:
    h = hashlib.sha256(f"{kind}|{array.dtype.str}|{array.shape}|{rate}|".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


# --- images ------------------------------------------------------------------------------------


def load_image(source: Any, *, policy: MediaPolicy = SERVER_POLICY) -> MediaItem:
    """An image as uint8 RGB ``[H, W, 3]`` (see :mod:`~edge_qwen.runtime.media.media_image`).

    Raises:
        RemoteMediaError / LocalMediaRefusedError / UnsupportedMediaError: a refused source or format.
        MediaTooLargeError: over ``max_bytes`` encoded or ``max_pixels`` decoded (checked from the
            header, so a decompression bomb is never decoded).
        MediaDecodeError: corrupt or truncated data.
    """
    limits = policy.limits
    n_bytes = 0
    if isinstance(source, np.ndarray):
        rgb = rgb_from_array(source, limits.max_pixels)
    elif isinstance(source, Image.Image):
        rgb = rgb_from_pil(source, limits.max_pixels)
    else:
        data = read_source(source, policy=policy, mime="image", raw_base64=False)
        rgb, n_bytes = (
            decode_image(data, max_pixels=limits.max_pixels, formats=limits.image_formats),
            len(data),
        )
    rgb = _frozen(rgb.copy())
    return MediaItem("image", rgb, _digest("image", rgb), n_bytes)


# --- audio -------------------------------------------------------------------------------------


def load_audio(
    source: Any,
    format: str | None = None,
    *,
    sample_rate: int | None,
    policy: MediaPolicy = SERVER_POLICY,
    mp3_decoder: AudioDecoder | None = None,
) -> MediaItem:
    """An audio clip as float32 mono at ``sample_rate`` (the encoder's, e.g. 16000).

    ``source`` is base64 text (OpenAI's ``input_audio.data``), a ``data:audio/...`` URL, bytes, a
    path (local policy only) or a float32 array already at ``sample_rate``.

    Raises:
        UnsupportedMediaError: no audio encoder (``sample_rate`` None), a format outside
            ``audio_formats``, or MP3 without ``mp3_decoder``.
        MediaTooLargeError: over ``max_bytes`` or ``max_audio_seconds``.
        MediaDecodeError: corrupt data.
    """
    limits = policy.limits
    if not sample_rate or sample_rate <= 0:
        raise UnsupportedMediaError("this model takes no audio; load one with an audio mmproj (Qwen2-Audio)")
    if isinstance(source, np.ndarray):
        pcm = np.asarray(source, dtype=np.float32)
        if pcm.ndim != 1 or pcm.size == 0 or not np.isfinite(pcm).all():
            raise MediaDecodeError("an audio array must be non-empty, finite float32 [samples]")
        return _audio_item(pcm, sample_rate, 0, limits)
    data = read_source(source, policy=policy, mime="audio", raw_base64=True)
    kind = (format or sniff_audio(data) or "").lower()
    if kind not in limits.audio_formats:
        raise UnsupportedMediaError(
            f"audio format {format or 'unknown'!r} is not supported; send one of "
            f"{', '.join(sorted(limits.audio_formats))}"
        )
    if sniff_audio(data) != kind:
        raise MediaDecodeError(f"the audio data is not a {kind} file; check 'format' and the encoding")
    if kind == "wav":
        pcm = decode_wav(data, sample_rate=sample_rate, max_seconds=limits.max_audio_seconds)
    else:
        pcm = _decode_mp3(data, limits, mp3_decoder)
    return _audio_item(pcm, sample_rate, len(data), limits)


def _decode_mp3(data: bytes, limits: MediaLimits, decoder: AudioDecoder | None) -> np.ndarray:
    if decoder is None:
        raise UnsupportedMediaError("MP3 needs the model's mmproj loaded (libmtmd decodes it); send WAV")
    check_size(data, mp3_byte_limit(limits.max_audio_seconds))  # bounds the decoded size too
    pcm = decoder(data)
    if pcm.size == 0:
        raise MediaDecodeError("the MP3 file holds no audio frames; re-encode it")
    return pcm


def _audio_item(pcm: np.ndarray, rate: int, n_bytes: int, limits: MediaLimits) -> MediaItem:
    seconds = pcm.shape[0] / rate
    if seconds > limits.max_audio_seconds:
        raise MediaTooLargeError(
            "the audio clip's length (seconds)",
            seconds,
            limits.max_audio_seconds,
            "send a shorter clip or split it",
        )
    pcm = _frozen(np.asarray(pcm, dtype=np.float32).copy())
    return MediaItem("audio", pcm, _digest("audio", pcm, rate), n_bytes, rate)


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any message carries an image or audio part."""
    return any(
        not isinstance(part, TextPart)
        for message in messages
        if not isinstance(message.get("content"), str | None)
        for part in parse_content(message.get("content"))
    )
