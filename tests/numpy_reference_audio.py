"""An independent float64 numpy forward pass of Qwen2-Audio's audio side: 16 kHz samples ->
Whisper log-mel features (transformers' WhisperFeatureExtractor) -> audio tower -> projector.

It follows transformers' feature_extraction_whisper / modeling_qwen2_audio and reads the Hugging
Face folder directly, sharing no code with the converter. One 30-second window is computed the way
llama.cpp's mtmd computes every chunk: the clip zero-padded to 30 s and the encoder attending over
all 1500 positions. (transformers masks the padding of a shorter clip and keeps only its own
tokens; mtmd does not, which is llama.cpp's choice and not the converter's to change.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from numpy_reference import softmax
from numpy_reference_vision import gelu_erf, layer_norm

Weights = dict[str, np.ndarray]
SAMPLE_RATE, N_FFT, HOP, CHUNK_SAMPLES = 16000, 400, 160, 480000


def mel_filters(n_mels: int) -> np.ndarray:
    """[n_mels, n_fft/2 + 1] triangular filters on the Slaney mel scale, Slaney area-normalized
    (transformers' mel_filter_bank(norm="slaney", mel_scale="slaney"), librosa's default)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return np.where(
            f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
        )

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))

    freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """[n_mels, 3000] features of the first 30 s: pad to 30 s, centered STFT (reflect), periodic
    Hann, power, mel, log10 (floor 1e-10), last frame dropped, clamp to max - 8, (x + 4) / 4."""
    x = np.zeros(CHUNK_SAMPLES)
    x[: min(samples.size, CHUNK_SAMPLES)] = samples[:CHUNK_SAMPLES]
    x = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + (x.size - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n_frames] * window
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2
    spec = np.log10(np.maximum(power @ mel_filters(n_mels).T, 1e-10)).T[:, :-1]
    spec = np.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Conv1d, kernel 3, padding 1: x [C_in, T], w [C_out, C_in, 3] -> [C_out, T / stride]."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    n_out = (x.shape[1] + 2 - 3) // stride + 1
    cols = np.stack([xp[:, k : k + stride * n_out : stride] for k in range(3)], axis=-1)  # [C_in, T', 3]
    return np.einsum("oik,itk->ot", w, cols) + b[:, None]


def _load(folder: Path) -> tuple[dict, Weights]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_tiny_checkpoints import read_checkpoint

    cfg = json.loads((folder / "config.json").read_text())
    media = ("audio_tower.", "multi_modal_projector.")
    return cfg, {n: t.astype(np.float64) for n, t in read_checkpoint(folder).items() if n.startswith(media)}


def audio_embeddings(folder: str | os.PathLike[str], samples: np.ndarray) -> np.ndarray:
    """float64 [750, lm_hidden] projector output for the first 30-second window of ``samples``."""
    cfg, w = _load(Path(folder))
    a = cfg["audio_config"]
    n_head, d = a["encoder_attention_heads"], a["d_model"]
    hd = d // n_head
    x = log_mel(np.asarray(samples, dtype=np.float64), a["num_mel_bins"])
    t = "audio_tower"
    x = gelu_erf(conv1d(x, w[f"{t}.conv1.weight"], w[f"{t}.conv1.bias"], 1))
    x = gelu_erf(conv1d(x, w[f"{t}.conv2.weight"], w[f"{t}.conv2.bias"], 2)).T  # [1500, d]
    x = x + w[f"{t}.embed_positions.weight"][: x.shape[0]]
    n = x.shape[0]
    for i in range(a["encoder_layers"]):
        p = f"{t}.layers.{i}"
        h = layer_norm(x, w[f"{p}.self_attn_layer_norm.weight"], w[f"{p}.self_attn_layer_norm.bias"], 1e-5)
        q = (h @ w[f"{p}.self_attn.q_proj.weight"].T + w[f"{p}.self_attn.q_proj.bias"]).reshape(n, n_head, hd)
        k = (h @ w[f"{p}.self_attn.k_proj.weight"].T).reshape(n, n_head, hd)  # no bias on k
        v = (h @ w[f"{p}.self_attn.v_proj.weight"].T + w[f"{p}.self_attn.v_proj.bias"]).reshape(n, n_head, hd)
        q, k, v = q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # [heads, n, hd]
        att = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd))  # full attention over the window
        o = (att @ v).transpose(1, 0, 2).reshape(n, d)
        x = x + o @ w[f"{p}.self_attn.out_proj.weight"].T + w[f"{p}.self_attn.out_proj.bias"]
        h = layer_norm(x, w[f"{p}.final_layer_norm.weight"], w[f"{p}.final_layer_norm.bias"], 1e-5)
        h = gelu_erf(h @ w[f"{p}.fc1.weight"].T + w[f"{p}.fc1.bias"])
        x = x + h @ w[f"{p}.fc2.weight"].T + w[f"{p}.fc2.bias"]
    x = x.reshape(n // 2, 2, d).mean(axis=1)  # AvgPool1d(2, stride=2) over time
    x = layer_norm(x, w[f"{t}.layer_norm.weight"], w[f"{t}.layer_norm.bias"], 1e-5)
    return x @ w["multi_modal_projector.linear.weight"].T + w["multi_modal_projector.linear.bias"]
