"""Qwen2-Audio checkpoints: the Whisper-style audio encoder + projector as an audio mmproj GGUF.

The language model is a plain Qwen2 (``qwen2`` GGUF through the text converter); the audio tower
(two conv1d layers, sinusoidal positions, pre-LN transformer, 2x average pooling, final LayerNorm)
and the one-layer projector become an mmproj with ``clip.has_audio_encoder`` and projector type
``qwen2a``. llama.cpp computes the 128-bin log-mel spectrogram itself (Whisper's: 16 kHz, 25 ms
window, 10 ms hop, 30 s chunks) and its whisper-enc graph fixes 1500 positions per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from ..errors import CheckpointError
from .mmproj_tensor import MmprojTensor, block_names, mmproj_ggml_type, require_tensors, tensor_shape
from .safetensors import TensorRef

T = gguf.MODEL_TENSOR
WHISPER_POSITIONS = 1500  # 3000 mel frames per chunk, halved by conv2: clip.cpp's whisper-enc graph
AUDIO_EPS = 1e-5  # Whisper's LayerNorm default


@dataclass(frozen=True)
class AudioConfig:
    projector: str
    width: int
    n_ff: int
    n_head: int
    depth: int
    n_mels: int
    out_dim: int


def load_audio_config(folder: Path, raw: dict[str, Any], n_embd_text: int) -> AudioConfig:
    """Read ``audio_config``; refuse what llama.cpp's Qwen2-Audio graph cannot run.

    Raises:
        CheckpointError: a missing key, or a layout the whisper-enc graph does not have.
    """
    a = raw.get("audio_config")
    if not isinstance(a, dict):
        raise CheckpointError(f"{folder}/config.json: a Qwen2-Audio config needs audio_config")

    def need(key: str) -> int:
        if key not in a:
            raise CheckpointError(
                f"{folder}/config.json: audio_config lacks {key!r}; the checkpoint is incomplete"
            )
        return int(a[key])

    cfg = AudioConfig(
        projector=gguf.VisionProjectorType.QWEN2A,
        width=need("d_model"),
        n_ff=need("encoder_ffn_dim"),
        n_head=need("encoder_attention_heads"),
        depth=need("encoder_layers"),
        n_mels=need("num_mel_bins"),
        out_dim=n_embd_text,
    )
    fixed = {
        "max_source_positions": (int(a.get("max_source_positions", WHISPER_POSITIONS)), WHISPER_POSITIONS),
        "activation_function": (a.get("activation_function", "gelu"), "gelu"),
        "scale_embedding": (bool(a.get("scale_embedding", False)), False),
    }
    for key, (have, want) in fixed.items():
        if have != want:
            raise CheckpointError(
                f"{folder}/config.json: audio_config {key}={have!r}, but llama.cpp's Qwen2-Audio "
                f"encoder is built for {want!r}; the converted projector would compute something else"
            )
    if cfg.width % cfg.n_head:
        raise CheckpointError(
            f"{folder}/config.json: d_model {cfg.width} is not a multiple of the head count"
        )
    return cfg


def plan_audio(refs: dict[str, TensorRef], ac: AudioConfig, mmproj_type: str) -> list[MmprojTensor]:
    """Every mmproj tensor of the audio tower and projector (names from gguf-py's map).

    Raises:
        CheckpointError: a tensor gguf-py cannot name, a missing one, or a wrong position table.
    """
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH.MMPROJ, max(ac.depth, 3))  # conv1 / conv2 are numbered
    planned: list[MmprojTensor] = []
    for hf_name, ref in refs.items():
        lookup = "audio." + hf_name if hf_name.startswith("multi_modal_projector.") else hf_name
        mapped = name_map.get_type_and_name(lookup, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise CheckpointError(
                f"checkpoint tensor {hf_name!r} has no place in llama.cpp's Qwen2-Audio mmproj; "
                "the checkpoint does not match its config.json architecture"
            )
        kind, name = mapped
        # conv biases become [width, 1] columns, as ggml adds them to [frames, width] outputs
        take = _column if kind == T.A_ENC_CONV1D and hf_name.endswith(".bias") else None
        shape = tensor_shape(ref, (0, ref.shape[0]), take)
        if kind == T.A_ENC_EMBD_POS and shape != (WHISPER_POSITIONS, ac.width):
            raise CheckpointError(
                f"{hf_name}: shape {list(shape)}, expected [{WHISPER_POSITIONS}, {ac.width}]"
            )
        planned.append(
            MmprojTensor(
                name, shape, ref, (0, ref.shape[0]), mmproj_ggml_type(kind, shape, mmproj_type), take
            )
        )
    _check_complete(planned, ac)
    return planned


def _column(block: Any) -> Any:
    return block.reshape(-1, 1)


def _check_complete(planned: list[MmprojTensor], ac: AudioConfig) -> None:
    need = block_names([T.A_ENC_CONV1D], (1, 2))
    need += [gguf.TENSOR_NAMES[k] + ".weight" for k in (T.A_ENC_EMBD_POS, T.A_POST_NORM, T.A_MMPROJ_FC)]
    per_block = [T.A_ENC_ATTN_Q, T.A_ENC_ATTN_K, T.A_ENC_ATTN_V, T.A_ENC_OUTPUT, T.A_ENC_INPUT_NORM]
    per_block += [T.A_ENC_OUTPUT_NORM, T.A_ENC_FFN_UP, T.A_ENC_FFN_DOWN]
    require_tensors(planned, need + block_names(per_block, range(ac.depth)), "audio")


def add_audio_metadata(writer: gguf.GGUFWriter, ac: AudioConfig) -> None:
    """Every key clip.cpp reads for a Qwen2-Audio encoder (through gguf-py's helpers)."""
    writer.add_clip_has_audio_encoder(True)
    writer.add_clip_projector_type(ac.projector)
    writer.add_audio_projection_dim(ac.out_dim)
    writer.add_audio_embedding_length(ac.width)
    writer.add_audio_feed_forward_length(ac.n_ff)
    writer.add_audio_block_count(ac.depth)
    writer.add_audio_head_count(ac.n_head)
    writer.add_audio_num_mel_bins(ac.n_mels)
    writer.add_audio_attention_layernorm_eps(AUDIO_EPS)
