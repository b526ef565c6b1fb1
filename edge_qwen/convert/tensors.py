"""Map checkpoint tensors to GGUF tensors and stream their data in the output type.

Names come from gguf-py's ``TensorNameMap`` for the architecture; a tensor it cannot map, or one the
architecture's allow-list (``gguf.MODEL_TENSORS``) does not contain, is an error — never skipped.
Per-expert MoE weights are stacked into the 3-D tensors llama.cpp expects while writing, expert
after expert, so no stacked copy is ever held in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO, Any

import gguf
import numpy as np

from ..errors import CheckpointError, ShapeMismatchError
from ._io import ordered_map
from .architectures import HParams, expected_shape
from .safetensors import TensorRef

# Output types: name -> (ggml type, GGUF file type, numpy storage dtype)
OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType, np.dtype]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, np.dtype(np.float32)),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, np.dtype(np.float16)),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16, np.dtype(np.uint16)),
}
# Checkpoint tensors that carry no weights llama.cpp uses.
IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")
EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$")


@dataclass
class PlannedTensor:
    """One GGUF tensor: where its data comes from and how it is written.

    Duck-types the ndarray attributes ``GGUFWriter.add_tensor`` reads (shape, dtype, nbytes,
    tofile), so gguf-py writes it in its order with its padding while we stream the data.
    """

    name: str
    kind: gguf.MODEL_TENSOR
    shape: tuple[int, ...]  # row-major, like the checkpoint
    sources: list[TensorRef]  # several for stacked experts
    ggml_type: gguf.GGMLQuantizationType

    @property
    def dtype(self) -> np.dtype:
        return (
            np.dtype(np.float32)
            if self.ggml_type == gguf.GGMLQuantizationType.F32
            else (
                np.dtype(np.float16)
                if self.ggml_type == gguf.GGMLQuantizationType.F16
                else np.dtype(np.uint16)
            )
        )

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def tofile(self, fout: IO[bytes]) -> None:
        """Stream the data: blocks are read and encoded on a thread pool, written in order."""
        jobs = [(ref, start, rows) for ref in self.sources for start, rows in ref.row_blocks()]
        for block in ordered_map(self._encoded, jobs):
            fout.write(block.data)

    def _encoded(self, job: tuple[TensorRef, int, int]) -> np.ndarray:
        ref, start, rows = job
        return np.ascontiguousarray(self.encode(ref.read_rows(start, rows)))

    def encode(self, block: np.ndarray) -> np.ndarray:
        """float32 block -> the bytes of the output type (BF16 rounds to nearest even via gguf-py)."""
        if self.ggml_type == gguf.GGMLQuantizationType.BF16:
            return gguf.quants.quantize(block, gguf.GGMLQuantizationType.BF16)
        return block.astype(self.dtype, copy=False)


def plan_tensors(refs: dict[str, TensorRef], hp: HParams, outtype: str) -> list[PlannedTensor]:
    """Decide every output tensor: GGUF name, shape check, output type, data sources.

    Raises:
        CheckpointError: a tensor has no GGUF name for this architecture, or experts are incomplete.
        ShapeMismatchError: a tensor's shape disagrees with config.json.
    """
    arch = hp.arch.gguf_arch
    name_map = gguf.TensorNameMap(arch, hp.n_layer)
    allowed = set(gguf.MODEL_TENSORS[arch])
    grouped = _group_experts(refs, hp)
    planned: list[PlannedTensor] = []
    for hf_name, sources in grouped.items():
        if hp.tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        mapped = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None or mapped[0] not in allowed:
            raise CheckpointError(
                f"checkpoint tensor {hf_name!r} has no place in a {hp.arch.gguf_name} GGUF; "
                "the checkpoint does not match its config.json architecture"
            )
        kind, gguf_name = mapped
        shape = sources[0].shape if len(sources) == 1 else (len(sources), *sources[0].shape)
        want = expected_shape(kind, hp, bias=hf_name.endswith(".bias"))
        if want is not None and tuple(shape) != want:
            raise ShapeMismatchError(
                f"{hf_name}: shape {list(shape)} but config.json implies {list(want)}; "
                "config.json and the weights belong to different models"
            )
        planned.append(
            PlannedTensor(gguf_name, kind, tuple(shape), sources, _ggml_type(kind, shape, hp, outtype))
        )
    _check_complete(planned, hp)
    return planned


def _ggml_type(
    kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], hp: HParams, outtype: str
) -> gguf.GGMLQuantizationType:
    if len(shape) <= 1 or kind in hp.arch.f32_tensors:
        return gguf.GGMLQuantizationType.F32  # norms, biases and routers stay F32
    return OUTTYPES[outtype][0]


def _group_experts(refs: dict[str, TensorRef], hp: HParams) -> dict[str, list[TensorRef]]:
    """{hf name: sources}, per-expert ``…experts.E.up_proj.weight`` grouped as ``…experts.up_proj.weight``."""
    grouped: dict[str, list[TensorRef]] = {}
    experts: dict[str, dict[int, TensorRef]] = {}
    for name, ref in refs.items():
        if IGNORED.match(name):
            continue
        m = EXPERT.match(name)
        if m:
            experts.setdefault(f"{m.group(1)}.{m.group(3)}.weight", {})[int(m.group(2))] = ref
        else:
            grouped[name] = [ref]
    for merged, by_index in experts.items():
        if sorted(by_index) != list(range(hp.n_expert)):
            raise CheckpointError(
                f"{merged}: found experts {sorted(by_index)[:5]}… but num_experts is {hp.n_expert}; "
                "the checkpoint is incomplete"
            )
        shapes = {ref.shape for ref in by_index.values()}
        if len(shapes) != 1:
            raise ShapeMismatchError(f"{merged}: experts have different shapes {sorted(shapes)}")
        grouped[merged] = [by_index[i] for i in range(hp.n_expert)]
    return grouped


def _check_complete(planned: list[PlannedTensor], hp: HParams) -> None:
    """Every tensor a block needs is present (a missing one would fail later inside llama.cpp)."""
    names = {p.name for p in planned}
    for required in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT_NORM):
        name = gguf.TENSOR_NAMES[required] + ".weight"
        if name not in names:
            raise CheckpointError(f"checkpoint lacks the tensor that becomes {name}; it is incomplete")
    for kind in (
        gguf.MODEL_TENSOR.ATTN_Q,
        gguf.MODEL_TENSOR.ATTN_K,
        gguf.MODEL_TENSOR.ATTN_V,
        gguf.MODEL_TENSOR.ATTN_OUT,
        gguf.MODEL_TENSOR.ATTN_NORM,
        gguf.MODEL_TENSOR.FFN_NORM,
    ):
        for bid in range(hp.n_layer):
            name = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"
            if name not in names:
                raise CheckpointError(f"checkpoint lacks the tensor that becomes {name}; it is incomplete")


def parameter_count(planned: list[PlannedTensor]) -> int:
    return sum(int(np.prod(p.shape, dtype=np.int64)) for p in planned)


def describe(planned: list[PlannedTensor]) -> dict[str, Any]:
    """Counts per output ggml type (for reports)."""
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.ggml_type.name] = counts.get(p.ggml_type.name, 0) + 1
    return counts
