"""The hyper-parameters memory depends on, read from a GGUF header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from ..gguf_header import GGUFHeader, TensorInfo

K = gguf.Keys


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters memory depends on, from the GGUF header."""

    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    n_vocab: int
    n_merges: int
    n_ctx_train: int
    tensors: tuple[TensorInfo, ...]
    file_size: int
    # hybrids (Qwen3.5, Qwen3-Next): which trunk layers keep a recurrent state instead of K/V, and
    # that state's f32 elements per sequence and layer (llama.cpp's n_embd_r: conv, n_embd_s: SSM)
    recurrent: tuple[bool, ...] = ()
    state_r_elements: int = 0
    state_s_elements: int = 0
    n_nextn: int = 0  # MTP layers after the trunk (not loaded unless asked)

    @property
    def attention_layers(self) -> list[int]:
        """Trunk layers with a KV cache."""
        return [i for i in range(self.n_layer) if not (self.recurrent and self.recurrent[i])]

    @property
    def recurrent_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if self.recurrent and self.recurrent[i]]

    @property
    def tied_output(self) -> bool:
        return not any(t.name == "output.weight" for t in self.tensors)


def _per_layer(value: Any, n_layer: int) -> tuple[int, ...]:
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer


def model_shape(header: GGUFHeader) -> ModelShape:
    """Hyper-parameters from gguf.Keys; head dimensions default to n_embd / n_head like llama.cpp."""
    n_nextn = int(header.arch_value(K.LLM.NEXTN_PREDICT_LAYERS) or 0)
    n_layer = int(header.arch_value(K.LLM.BLOCK_COUNT) or 0) - n_nextn  # the trunk
    n_embd = int(header.arch_value(K.LLM.EMBEDDING_LENGTH) or 0)
    n_head = max(_per_layer(header.arch_value(K.Attention.HEAD_COUNT) or 1, n_layer) or (1,))
    head_kv = header.arch_value(K.Attention.HEAD_COUNT_KV)
    n_ff = header.arch_value(K.LLM.EXPERT_FEED_FORWARD_LENGTH) or header.arch_value(K.LLM.FEED_FORWARD_LENGTH)
    head_dim = n_embd // n_head if n_head else 0
    return ModelShape(
        architecture=header.architecture,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=max(_per_layer(n_ff or 4 * n_embd, n_layer) or (0,)),
        n_head=n_head,
        n_head_kv=_per_layer(head_kv if head_kv is not None else n_head, n_layer),
        key_length=int(header.arch_value(K.Attention.KEY_LENGTH) or head_dim),
        value_length=int(header.arch_value(K.Attention.VALUE_LENGTH) or head_dim),
        n_vocab=int(header.array_lengths.get(K.Tokenizer.LIST, 0)),
        n_merges=int(header.array_lengths.get(K.Tokenizer.MERGES, 0)),
        n_ctx_train=int(header.arch_value(K.LLM.CONTEXT_LENGTH) or 0),
        tensors=header.tensors,
        file_size=header.file_size,
        n_nextn=n_nextn,
        **_hybrid(header, n_layer),
    )


def _hybrid(header: GGUFHeader, n_layer: int) -> dict[str, Any]:
    """The recurrent layers and their state size, as llama.cpp derives them for a Gated DeltaNet
    hybrid: an explicit ``attention.recurrent_layers`` list, else every layer but each
    ``full_attention_interval``-th (default 4); conv state ``(d_conv - 1) x (d_inner + 2 x groups x
    d_state)`` and SSM state ``d_state x d_inner`` f32 elements per sequence."""
    d_conv = header.arch_value(K.SSM.CONV_KERNEL)
    if not d_conv:
        return {}
    recurrent = header.recurrent_layers(n_layer)
    d_inner = int(header.arch_value(K.SSM.INNER_SIZE) or 0)
    d_state = int(header.arch_value(K.SSM.STATE_SIZE) or 0)
    groups = int(header.arch_value(K.SSM.GROUP_COUNT) or 0)
    return {
        "recurrent": recurrent,
        "state_r_elements": (int(d_conv) - 1) * (d_inner + 2 * groups * d_state),
        "state_s_elements": d_state * d_inner,
    }
