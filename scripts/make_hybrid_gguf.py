"""Random-weight Qwen3.5 (``qwen35``) GGUFs: hybrid Gated DeltaNet + gated attention layers, written
straight with gguf-py's writer in the layout llama.cpp loads (its ``models/qwen35.cpp``).

No real Qwen3.5 weights are reachable here, and speed and memory do not depend on weight values: a
file with a real model's dimensions gives the real buffers (KV for the attention layers only, the
recurrent state of the others) and decode cost. Acceptance rates and quality on it mean nothing.

    python scripts/make_hybrid_gguf.py OUT.gguf                                   # tiny: 4 layers, 64 wide
    python scripts/make_hybrid_gguf.py OUT.gguf --set n_embd=1024 --set n_layer=24   # other dimensions
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCH = "qwen35"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class HybridDims:
    """The hyper-parameters of a ``qwen35`` model (llama.cpp's names in the comments)."""

    n_vocab: int = 512
    n_embd: int = 64
    n_layer: int = 4  # trunk layers; every ``full_attention_interval``-th is attention, the rest recurrent
    n_ff: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    rope_dims: int = 8  # partial rotary: rope.dimension_count
    rope_sections: tuple[int, int, int, int] = (2, 1, 1, 0)  # interleaved M-RoPE, summing to rope_dims / 2
    d_conv: int = 4  # ssm.conv_kernel
    d_state: int = 16  # ssm.state_size: the key/value head size of the delta net
    n_k_heads: int = 2  # ssm.group_count
    n_v_heads: int = 4  # ssm.time_step_rank
    full_attention_interval: int = 4
    n_ctx: int = 4096
    nextn: int = 0  # MTP layers after the trunk (nextn_predict_layers)

    @property
    def value_dim(self) -> int:  # ssm.inner_size
        return self.d_state * self.n_v_heads

    @property
    def conv_dim(self) -> int:
        return 2 * self.d_state * self.n_k_heads + self.value_dim

    def recurrent(self, layer: int) -> bool:
        return layer < self.n_layer and (layer + 1) % self.full_attention_interval != 0


PRESETS: dict[str, HybridDims] = {"tiny": HybridDims()}


def _tokens(n_vocab: int) -> list[str]:
    """GPT-2 byte tokens, the specials, then filler tokens up to ``n_vocab`` (never produced by BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    chars = [chr(b) if b in keep else chr(next(extra)) for b in range(256)]
    fill = [f"<filler_{i}>" for i in range(max(0, n_vocab - len(chars) - len(SPECIALS)))]
    return chars + fill + SPECIALS


def write_hybrid_gguf(path: str | os.PathLike[str], dims: HybridDims = HybridDims(), *, seed: int = 0,
                      dtype: str = "f32") -> Path:  # fmt: skip
    """Write a random ``qwen35`` GGUF to ``path`` (under a temporary name, renamed when complete)."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.incomplete")
    rng = np.random.default_rng(seed)
    np_type = {"f32": np.float32, "f16": np.float16}[dtype]
    d = dims
    tokens = _tokens(d.n_vocab)
    w = gguf.GGUFWriter(tmp, ARCH)
    w.add_context_length(d.n_ctx)
    w.add_embedding_length(d.n_embd)
    w.add_block_count(d.n_layer + d.nextn)
    w.add_feed_forward_length(d.n_ff)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_head_kv)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_rope_dimension_count(d.rope_dims)
    w.add_rope_dimension_sections(list(d.rope_sections))
    w.add_rope_freq_base(10_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_ssm_conv_kernel(d.d_conv)
    w.add_ssm_inner_size(d.value_dim)
    w.add_ssm_state_size(d.d_state)
    w.add_ssm_time_step_rank(d.n_v_heads)
    w.add_ssm_group_count(d.n_k_heads)
    w.add_full_attention_interval(d.full_attention_interval)
    if d.nextn:
        w.add_nextn_predict_layers(d.nextn)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen35")
    w.add_token_list(tokens)
    n_normal = len(tokens) - len(SPECIALS)
    w.add_token_types([gguf.TokenType.NORMAL] * n_normal + [gguf.TokenType.CONTROL] * len(SPECIALS))
    w.add_token_merges(["Ġ t"])
    w.add_eos_token_id(len(tokens) - 1)
    w.add_bos_token_id(len(tokens) - 3)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np_type)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", weight(d.n_vocab, d.n_embd))
    w.add_tensor("output_norm.weight", norm(d.n_embd))
    w.add_tensor("output.weight", weight(d.n_vocab, d.n_embd))
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    for i in range(d.n_layer + d.nextn):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", norm(d.n_embd))
        w.add_tensor(f"{b}.post_attention_norm.weight", norm(d.n_embd))
        if d.recurrent(i):  # Gated DeltaNet
            w.add_tensor(f"{b}.attn_qkv.weight", weight(d.conv_dim, d.n_embd))
            w.add_tensor(f"{b}.attn_gate.weight", weight(d.value_dim, d.n_embd))
            w.add_tensor(f"{b}.ssm_conv1d.weight", weight(d.conv_dim, d.d_conv).astype(np.float32))
            w.add_tensor(f"{b}.ssm_dt.bias", np.zeros(d.n_v_heads, dtype=np.float32))
            w.add_tensor(f"{b}.ssm_a", -np.ones(d.n_v_heads, dtype=np.float32))
            w.add_tensor(f"{b}.ssm_beta.weight", weight(d.n_v_heads, d.n_embd))
            w.add_tensor(f"{b}.ssm_alpha.weight", weight(d.n_v_heads, d.n_embd))
            w.add_tensor(f"{b}.ssm_norm.weight", norm(d.d_state))
            w.add_tensor(f"{b}.ssm_out.weight", weight(d.n_embd, d.value_dim))
        else:  # gated attention: q carries its gate
            w.add_tensor(f"{b}.attn_q.weight", weight(2 * q, d.n_embd))
            w.add_tensor(f"{b}.attn_k.weight", weight(kv, d.n_embd))
            w.add_tensor(f"{b}.attn_v.weight", weight(kv, d.n_embd))
            w.add_tensor(f"{b}.attn_output.weight", weight(d.n_embd, q))
            w.add_tensor(f"{b}.attn_q_norm.weight", norm(d.head_dim))
            w.add_tensor(f"{b}.attn_k_norm.weight", norm(d.head_dim))
        if i >= d.n_layer:  # the MTP block's own tensors
            w.add_tensor(f"{b}.nextn.eh_proj.weight", weight(d.n_embd, 2 * d.n_embd))
            w.add_tensor(f"{b}.nextn.enorm.weight", norm(d.n_embd))
            w.add_tensor(f"{b}.nextn.hnorm.weight", norm(d.n_embd))
        w.add_tensor(f"{b}.ffn_gate.weight", weight(d.n_ff, d.n_embd))
        w.add_tensor(f"{b}.ffn_up.weight", weight(d.n_ff, d.n_embd))
        w.add_tensor(f"{b}.ffn_down.weight", weight(d.n_embd, d.n_ff))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .gguf to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=INT",
        help="override a HybridDims field (n_vocab, n_embd, n_layer, n_ff, nextn, ...); repeatable",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dims = PRESETS[args.preset]
    for item in args.set:
        field, _, value = item.partition("=")
        dims = dataclasses.replace(dims, **{field: int(value)})
    path = write_hybrid_gguf(args.out, dims, seed=args.seed, dtype=args.dtype)
    size = path.stat().st_size / 2**20
    print(f"{path}: {ARCH} {args.preset}, {dims.n_layer} layers (+{dims.nextn} MTP), {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
