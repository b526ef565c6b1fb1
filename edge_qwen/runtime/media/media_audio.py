"""Audio clips to float32 mono at the encoder's rate: WAV parsed here, MP3 through libmtmd.

WAV: a small RIFF reader over ``struct`` + numpy rather than :mod:`wave`, because Python 3.10/3.11's
``wave`` refuses IEEE-float WAV (format 3) and ``WAVE_FORMAT_EXTENSIBLE``, both common from audio
tools. The header gives the clip's length, so an over-long clip is refused before any sample is
converted. Integer PCM (8-bit unsigned, 16/24/32-bit signed) and float32/64 are read; channels are
averaged to mono.

MP3: libmtmd links miniaudio, and ``mtmd_helper_bitmap_init_from_buf`` decodes a WAV/MP3/FLAC
buffer straight to mono float32 at the model's sample rate. It needs a loaded mmproj context, so
:func:`mtmd_mp3_decoder` turns an :class:`~edge_qwen.mtmd_native.Mtmd` into the decoder callback
that :func:`edge_qwen.runtime.media.content.load_audio` takes. miniaudio has no way to stop after N
seconds, so the encoded size is capped first (:func:`mp3_byte_limit`): that bounds the decoded
size too (MP3 never codes below 8 kbit/s).

Resampling: band-limited interpolation (a Hann-windowed sinc whose cutoff is the lower of the two
Nyquist rates), so downsampling 44.1/48 kHz to 16 kHz does not alias tones above 8 kHz back into
the speech band, as linear interpolation would.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ...errors import MediaDecodeError, MediaTooLargeError, UnsupportedMediaError

if TYPE_CHECKING:
    from ...mtmd_native import Mtmd

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_SINC_HALF_WIDTH = 16  # zero crossings of the interpolation kernel on each side
_BLOCK_TAPS = 1 << 22  # kernel entries computed per step (32 MB a matrix, whatever the rate ratio)
MAX_WAV_RATE = 192_000  # the highest rate studio audio uses; 4 GHz would make a 4-million-tap kernel
_MP3_MAX_BITRATE = 320_000 // 8  # bytes per second
_MP3_TAG_SLACK = 1 << 20  # ID3 tags (cover art) before the audio frames

AudioDecoder = Callable[[bytes], np.ndarray]  # file bytes -> float32 mono at the model's rate


def sniff_audio(data: bytes) -> str | None:
    """``"wav"``, ``"mp3"`` or None, from the first bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def decode_wav(data: bytes, *, sample_rate: int, max_seconds: float) -> np.ndarray:
    """A WAV file as float32 mono in [-1, 1] at ``sample_rate``.

    Raises:
        MediaDecodeError: not a RIFF/WAVE file, or truncated.
        UnsupportedMediaError: a sample format other than integer PCM or IEEE float.
        MediaTooLargeError: longer than ``max_seconds``.
    """
    fmt, payload = _riff_chunks(data)
    if len(fmt) < 16:
        raise MediaDecodeError("the WAV 'fmt ' chunk is truncated; re-export the file as 16-bit PCM WAV")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # the sub-format GUID starts with the plain tag
    width = bits // 8
    if rate > MAX_WAV_RATE:
        raise UnsupportedMediaError(
            f"the WAV file declares {rate:,} Hz, above the {MAX_WAV_RATE:,} Hz limit; "
            "re-export it at 16-48 kHz (e.g. `ffmpeg -i in.wav -ar 16000 out.wav`)"
        )
    if channels == 0 or rate == 0 or width == 0 or block_align != channels * width:
        raise MediaDecodeError(
            f"the WAV header is inconsistent ({channels} channels, {rate} Hz, {bits} bits, "
            f"block {block_align}); re-export the file as 16-bit PCM WAV"
        )
    frames = len(payload) // block_align
    seconds = frames / rate
    if seconds > max_seconds:
        raise MediaTooLargeError(
            "the audio clip's length (seconds)", seconds, max_seconds, "send a shorter clip or split it"
        )
    samples = _samples(payload[: frames * block_align], tag, width).reshape(frames, channels)
    return resample(samples.mean(axis=1, dtype=np.float64), rate, sample_rate).astype(np.float32)


def _riff_chunks(data: bytes) -> tuple[bytes, bytes]:
    """The ``fmt `` and ``data`` chunks of a RIFF/WAVE file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MediaDecodeError("the audio is not a RIFF/WAVE file; send a .wav file or format 'mp3'")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data) and b"data" not in chunks:
        name, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunks.setdefault(name, data[pos + 8 : pos + 8 + size])  # a truncated data chunk: what is there
        pos += 8 + size + (size & 1)
    if b"fmt " not in chunks or b"data" not in chunks:
        raise MediaDecodeError("the WAV file has no 'fmt ' or 'data' chunk (truncated?); re-export it")
    return chunks[b"fmt "], chunks[b"data"]


def _samples(payload: bytes, tag: int, width: int) -> np.ndarray:
    """Interleaved samples as float64 in [-1, 1]."""
    if tag == _FLOAT and width in (4, 8):
        return np.frombuffer(payload, dtype=f"<f{width}").astype(np.float64)
    if tag != _PCM or width not in (1, 2, 3, 4):
        raise UnsupportedMediaError(
            f"WAV sample format {tag:#06x} with {width * 8} bits is not supported; "
            "convert it to 16-bit PCM (e.g. `ffmpeg -i in.wav -c:a pcm_s16le out.wav`)"
        )
    if width == 1:
        return (np.frombuffer(payload, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 3:  # 24-bit: widen each little-endian triple into the top of an int32
        raw = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = raw
        return padded.view("<i4").ravel().astype(np.float64) / 2.0**31
    return np.frombuffer(payload, dtype=f"<i{width}").astype(np.float64) / 2.0 ** (8 * width - 1)


def resample(signal: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``signal`` (1-D) resampled from ``source_rate`` to ``target_rate`` Hz.

    Each output sample at input time ``t = n * source_rate / target_rate`` is
    ``sum_k x[k] * c * sinc(c * (t - k)) * hann((t - k) / W)`` with ``c = min(1, target/source)``
    (the anti-alias cutoff) and ``W = 16 / c`` input samples: a low-pass to the lower Nyquist rate,
    then exact band-limited interpolation. Samples outside the clip count as zero.
    """
    x = np.asarray(signal, dtype=np.float64)
    if source_rate == target_rate or x.size == 0:
        return x.copy()
    cutoff = min(1.0, target_rate / source_rate)
    half = int(np.ceil(_SINC_HALF_WIDTH / cutoff))
    n_out = int(np.ceil(x.size * target_rate / source_rate))
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    offsets = np.arange(-half + 1, half + 1)
    out = np.empty(n_out)
    block = max(1, _BLOCK_TAPS // offsets.size)
    for start in range(0, n_out, block):
        t = np.arange(start, min(start + block, n_out)) * (source_rate / target_rate)
        base = np.floor(t).astype(np.int64)
        taps = base[:, None] + offsets[None, :]  # input indices around each output time
        dist = t[:, None] - taps
        kernel = cutoff * np.sinc(cutoff * dist) * (0.5 + 0.5 * np.cos(np.pi * dist / (half + 1)))
        out[start : start + t.size] = (padded[taps + half] * kernel).sum(axis=1)
    return out


def mp3_byte_limit(max_seconds: float) -> int:
    """Largest MP3 accepted for ``max_seconds`` of audio: the top bitrate, plus room for ID3 tags."""
    return int(max_seconds * _MP3_MAX_BITRATE) + _MP3_TAG_SLACK


def mtmd_mp3_decoder(mtmd: Mtmd) -> AudioDecoder:
    """Decode audio files with libmtmd's miniaudio, at ``mtmd``'s sample rate (needs an audio mmproj)."""
    from llama_cpp import mtmd_cpp as M

    if not mtmd.supports_audio:
        raise UnsupportedMediaError("this model's mmproj has no audio encoder; load an audio model")

    def decode(data: bytes) -> np.ndarray:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_helper_bitmap_init_from_buf(mtmd._ctx, buf, len(data), False)  # never a video
        if not bitmap:
            raise MediaDecodeError("libmtmd (miniaudio) could not decode the audio; is it a valid MP3?")
        try:
            if not M.mtmd_bitmap_is_audio(bitmap):
                raise MediaDecodeError("the bytes decode as an image, not audio; send it as an image part")
            n = M.mtmd_bitmap_get_n_bytes(bitmap) // 4
            ptr = ctypes.cast(M.mtmd_bitmap_get_data(bitmap), ctypes.POINTER(ctypes.c_float))
            return np.ctypeslib.as_array(ptr, shape=(n,)).copy() if n else np.zeros(0, np.float32)
        finally:
            M.mtmd_bitmap_free(bitmap)

    return decode
