"""Media parts: parsed, loaded under limits, and turned into template text with one marker each.

No model is loaded except in the MP3 test, which needs libmtmd's decoder (the tiny Qwen2-Audio
mmproj) and LAME to make a real MP3.
"""

from __future__ import annotations

import base64
import io
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_qwen.errors import (
    LocalMediaRefusedError,
    MediaDecodeError,
    MediaError,
    MediaMarkerError,
    MediaTooLargeError,
    RemoteMediaError,
    UnsupportedMediaError,
)
from edge_qwen.runtime.media.content import (
    LOCAL_POLICY,
    QWEN2_AUDIO_PART_TEXT,
    SERVER_POLICY,
    MediaLimits,
    MediaPolicy,
    extract_media,
    load_audio,
    load_image,
    split_at_markers,
)
from edge_qwen.runtime.media.media_audio import resample

MARKER = "<__media__>"
RATE = 16000


def picture(width: int = 40, height: int = 30) -> np.ndarray:
    rng = np.random.default_rng(width * 1000 + height)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(rgb: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **save)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def wav_bytes(samples: np.ndarray, rate: int, *, width: int = 2, channels: int = 1, fmt: int = 1) -> bytes:
    """A WAV file written by hand (``wave`` cannot write float WAV)."""
    frames = np.repeat(samples[:, None], channels, axis=1).ravel()
    if fmt == 3:
        payload = frames.astype("<f4").tobytes()
    else:
        payload = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    block = channels * width
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, width * 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", len(payload))
    return b"RIFF" + struct.pack("<I", len(body) + len(payload)) + body + payload


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


# --- images ------------------------------------------------------------------------------------


def test_png_data_url_decodes_to_the_exact_pixels() -> None:
    rgb = picture()
    item = load_image(data_url(encoded(rgb)))
    assert item.kind == "image" and item.array.dtype == np.uint8 and item.array.shape == (30, 40, 3)
    np.testing.assert_array_equal(item.array, rgb)
    assert not item.array.flags.writeable  # the digest stays true


def test_jpeg_decodes_close_to_the_original() -> None:
    rgb = np.full((32, 32, 3), (200, 40, 90), dtype=np.uint8)
    item = load_image(data_url(encoded(rgb, "JPEG", quality=95), "image/jpeg"))
    assert np.abs(item.array.astype(int) - rgb).max() <= 4


def test_digest_is_the_content_not_the_container() -> None:
    rgb = picture()
    png, bmp = load_image(encoded(rgb)), load_image(encoded(rgb, "BMP"))
    assert png.digest == bmp.digest and png.n_bytes != bmp.n_bytes
    other = rgb.copy()
    other[0, 0, 0] ^= 1
    assert load_image(other).digest != png.digest
    assert load_image(rgb.reshape(40, 30, 3)).digest != png.digest  # same bytes, other shape


def test_exif_orientation_is_applied_and_alpha_goes_over_white() -> None:
    rgb = picture(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = load_image(encoded(rgb, "JPEG", exif=exif.tobytes(), quality=100))
    assert rotated.array.shape == (40, 30, 3)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    assert (load_image(encoded(rgba)).array == 255).all()


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert tuple(load_image(buf.getvalue()).array[0, 0]) == (255, 0, 0)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """A PNG claiming 100,000 x 100,000 pixels (a 40 GB RGBA canvas) in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 6, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    with pytest.raises(MediaTooLargeError, match="pixel count") as info:
        load_image(data_url(bomb))
    assert info.value.status == 413
    with pytest.raises(MediaTooLargeError, match="pixel count.*100x100"):  # our own limit, too
        load_image(encoded(picture(100, 100)), policy=MediaPolicy(limits=MediaLimits(max_pixels=5000)))


def test_oversized_data_url_is_refused_before_decoding() -> None:
    policy = MediaPolicy(limits=MediaLimits(max_bytes=1000))
    with pytest.raises(MediaTooLargeError, match="size \\(bytes\\).*limit is 1,000"):
        load_image("data:image/png;base64," + "A" * 100_000, policy=policy)


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("https://example.com/cat.png", RemoteMediaError, "data URL"),
        ("http://169.254.169.254/latest", RemoteMediaError, "offline"),
        ("ftp://host/cat.png", UnsupportedMediaError, "scheme 'ftp'"),
        ("data:text/plain;base64,aGk=", UnsupportedMediaError, "data:image"),
        ("data:image/png,notbase64", UnsupportedMediaError, "base64"),
        ("data:image/png;base64,@@@", MediaDecodeError, "base64"),
        ("/etc/passwd", LocalMediaRefusedError, "data URL"),
        ("file:///etc/passwd", LocalMediaRefusedError, "local files"),
    ],
)
def test_refused_sources_name_the_way_out(url: str, error: type[MediaError], message: str) -> None:
    with pytest.raises(error, match=message):
        load_image(url, policy=SERVER_POLICY)


def test_local_files_only_under_the_local_policy(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encoded(picture()))
    for source in (str(path), path, path.as_uri()):
        assert load_image(source, policy=LOCAL_POLICY).array.shape == (30, 40, 3)
    with pytest.raises(LocalMediaRefusedError):
        load_image(path, policy=SERVER_POLICY)


def test_unsupported_and_corrupt_images() -> None:
    buf = io.BytesIO()
    Image.fromarray(picture()).save(buf, format="TIFF")
    with pytest.raises(UnsupportedMediaError, match="convert it to PNG"):
        load_image(buf.getvalue())
    with pytest.raises(MediaDecodeError, match="corrupt or truncated"):
        load_image(encoded(picture())[:200])
    with pytest.raises(UnsupportedMediaError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))


# --- audio -------------------------------------------------------------------------------------


def test_wav_resampled_to_the_encoder_rate_matches_the_analytic_tone() -> None:
    item = load_audio(wav_bytes(tone(440, 1.0, 44100), 44100, width=4, channels=2), "wav", sample_rate=RATE)
    assert item.kind == "audio" and item.array.dtype == np.float32 and item.sample_rate == RATE
    assert item.array.shape == (RATE,) and item.seconds == pytest.approx(1.0)
    expected = tone(440, 1.0, RATE)
    inner = slice(200, -200)  # the clip's edges see the zeros outside it
    assert np.abs(item.array[inner] - expected[inner]).max() < 2e-3


def test_downsampling_removes_tones_above_the_new_nyquist() -> None:
    """A 10 kHz tone does not exist at 16 kHz; linear interpolation would alias it to 6 kHz."""
    out = resample(tone(10_000, 0.5, 48000), 48000, RATE)
    assert np.sqrt(np.mean(out[400:-400] ** 2)) < 0.01  # was 0.35 RMS


def test_pcm16_float_and_base64_wav_agree() -> None:
    samples = tone(300, 0.25, RATE)
    pcm16 = load_audio(base64.b64encode(wav_bytes(samples, RATE)).decode(), "wav", sample_rate=RATE)
    floats = load_audio(data_url(wav_bytes(samples, RATE, width=4, fmt=3), "audio/wav"), sample_rate=RATE)
    np.testing.assert_allclose(pcm16.array, samples, atol=1e-4)
    np.testing.assert_allclose(floats.array, samples, atol=1e-7)
    assert pcm16.digest != floats.digest  # 16-bit rounding differs
    again = load_audio(wav_bytes(samples, RATE), "wav", sample_rate=RATE)
    assert again.digest == pcm16.digest


def test_audio_limits_and_formats() -> None:
    long_wav = wav_bytes(np.zeros(31 * RATE), RATE)
    with pytest.raises(MediaTooLargeError, match="length \\(seconds\\) is 31"):
        load_audio(long_wav, "wav", sample_rate=RATE)
    with pytest.raises(UnsupportedMediaError, match="'flac' is not supported"):
        load_audio(b"fLaC" + b"\0" * 40, "flac", sample_rate=RATE)
    with pytest.raises(MediaDecodeError, match="not a mp3"):
        load_audio(wav_bytes(np.zeros(10), RATE), "mp3", sample_rate=RATE)
    with pytest.raises(UnsupportedMediaError, match="takes no audio"):
        load_audio(wav_bytes(np.zeros(10), RATE), "wav", sample_rate=None)
    with pytest.raises(MediaDecodeError, match="no 'fmt ' or 'data' chunk"):
        load_audio(b"RIFF\0\0\0\0WAVEjunk", "wav", sample_rate=RATE)
    with pytest.raises(MediaDecodeError, match="not a wav file"):
        load_audio(b"OggS" + b"\0" * 40, "wav", sample_rate=RATE)


def test_a_wav_that_declares_an_absurd_rate_is_refused_before_resampling() -> None:
    clip = wav_bytes(np.zeros(400_000), 2_000_000_000)  # 0.2 ms of audio at 2 GHz: a 2M-tap kernel
    start = time.perf_counter()
    with pytest.raises(UnsupportedMediaError, match="2,000,000,000 Hz, above the 192,000 Hz limit"):
        load_audio(clip, "wav", sample_rate=RATE)
    assert time.perf_counter() - start < 0.5
    top = load_audio(wav_bytes(tone(1000, 0.5, 192_000), 192_000), "wav", sample_rate=RATE)
    assert top.array.shape == (RATE // 2,)


# --- conversations -----------------------------------------------------------------------------


def test_extract_media_leaves_one_marker_per_item_in_order() -> None:
    png = data_url(encoded(picture()))
    wav = base64.b64encode(wav_bytes(tone(300, 0.1, RATE), RATE)).decode()
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png}},
                {"type": "text", "text": "What is this? And this:"},
                {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A "}, {"type": "text", "text": "cat."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": png}]},  # string shorthand
    ]
    prompt = extract_media(messages, marker=MARKER, sample_rate=RATE)
    assert [m["content"] for m in prompt.messages] == [
        "Be brief.",
        f"{MARKER}What is this? And this:{MARKER}",
        "A cat.",
        MARKER,
    ]
    assert [i.kind for i in prompt.items] == ["image", "audio", "image"]
    assert prompt.items[0].digest == prompt.items[2].digest  # a follow-up about the same image
    assert messages[1]["content"][0]["type"] == "image_url"  # the caller's messages are untouched


def test_qwen2_audio_labels_each_clip_like_its_template() -> None:
    wav = wav_bytes(tone(300, 0.1, RATE), RATE)
    parts = [
        {"type": "audio", "audio": wav},
        {"type": "audio", "audio": wav},
        {"type": "text", "text": "Same?"},
    ]
    prompt = extract_media(
        [{"role": "user", "content": parts}], marker=MARKER, sample_rate=RATE, part_text=QWEN2_AUDIO_PART_TEXT
    )
    assert prompt.messages[0]["content"] == f"Audio 1: {MARKER}\nAudio 2: {MARKER}\nSame?"


def test_conversation_refusals() -> None:
    img = {"type": "image", "image": picture()}
    with pytest.raises(MediaTooLargeError, match="number of images and audio clips is 9"):
        extract_media([{"role": "user", "content": [img] * 9}], marker=MARKER)
    forged = [{"role": "user", "content": [img, {"type": "text", "text": f"see {MARKER}"}]}]
    with pytest.raises(MediaMarkerError, match="placeholder"):
        extract_media(forged, marker=MARKER)
    with pytest.raises(UnsupportedMediaError, match="not understood"):
        extract_media([{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}], marker=MARKER)


def test_split_at_markers_keeps_the_segment_flags() -> None:
    segments = [(f"<|im_start|>user\n{MARKER}Hi ", True), ("<|im_end|>", False), (f"{MARKER}\n", True)]
    assert split_at_markers(segments, MARKER, 2) == [
        ("<|im_start|>user\n", True),
        0,
        ("Hi ", True),
        ("<|im_end|>", False),
        1,
        ("\n", True),
    ]
    with pytest.raises(MediaMarkerError, match="1 media placeholders for 2"):
        split_at_markers([(MARKER, True)], MARKER, 2)


# --- MP3 through libmtmd -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_audio_pair(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> tuple[Path, Path]:
    """(text GGUF, audio mmproj) of the tiny random Qwen2-Audio checkpoint."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from make_tiny_multimodal import make_multimodal_checkpoint

    from edge_qwen.convert import convert

    root = tmp_path_factory.mktemp("tiny-audio")
    checkpoint = make_multimodal_checkpoint(root / "hf", arch="qwen2audio", tokenizer_dir=qwen3_tokenizer_dir)
    out = convert(checkpoint, root / "gguf", outtype="f32", evaluate=False, quiet=True).as_dict()
    return Path(out["gguf"]), Path(out["mmproj"]["path"])


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.skipif(shutil.which("lame") is None, reason="needs LAME to make an MP3 (apt-get install lame)")
def test_mp3_decodes_through_libmtmd(tiny_audio_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import llama_cpp

    from edge_qwen import _llama
    from edge_qwen.mtmd_native import Mtmd
    from edge_qwen.runtime.media.media_audio import mtmd_mp3_decoder

    (tmp_path / "a.wav").write_bytes(wav_bytes(tone(440, 2.0, RATE), RATE))
    subprocess.run(
        ["lame", "--quiet", "-b", "128", str(tmp_path / "a.wav"), str(tmp_path / "a.mp3")], check=True
    )
    mp3 = base64.b64encode((tmp_path / "a.mp3").read_bytes()).decode()
    _llama.init_backend()
    model = llama_cpp.llama_model_load_from_file(
        str(tiny_audio_pair[0]).encode(), llama_cpp.llama_model_default_params()
    )
    try:
        with Mtmd(tiny_audio_pair[1], model, threads=2) as mtmd:
            decoder = mtmd_mp3_decoder(mtmd)
            item = load_audio(mp3, "mp3", sample_rate=mtmd.sample_rate, mp3_decoder=decoder)
            with pytest.raises(MediaDecodeError, match="not a mp3"):
                load_audio(wav_bytes(np.zeros(10), RATE), "mp3", sample_rate=RATE, mp3_decoder=decoder)
    finally:
        llama_cpp.llama_model_free(model)
    assert item.sample_rate == 16000 and abs(item.seconds - 2.0) < 0.1  # LAME pads a frame or two
    spectrum = np.abs(np.fft.rfft(item.array))
    assert np.argmax(spectrum) * RATE / item.array.size == pytest.approx(440, abs=2)
    assert 0.2 < np.abs(item.array).max() < 0.6  # a 0.5-amplitude tone, not noise or silence


def test_mp3_without_a_decoder_says_to_send_wav() -> None:
    with pytest.raises(UnsupportedMediaError, match="send WAV"):
        load_audio(b"ID3" + b"\0" * 100, "mp3", sample_rate=RATE)
