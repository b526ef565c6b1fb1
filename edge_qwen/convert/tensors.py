"""Map checkpoint tensors to GGUF tensors and stream their data in the output type.

Each architecture family (see .families) names its tensors through gguf-py's ``TensorNameMap``; a
tensor it cannot map, or one the architecture's allow-list (``gguf.MODEL_TENSORS``) does not
contain, is an error — never skipped. Per-expert MoE weights are stacked into the 3-D tensors
llama.cpp expects while writing, expert after expert, so no stacked copy is ever held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import gguf
import numpy as np

from ._io import ordered_map
from .architectures import HParams
from .families import MtpMode, Source, family_of
from .safetensors import TensorRef

# Output types: name -> (ggml type, GGUF file type, numpy storage dtype)
OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType, np.dtype]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, np.dtype(np.float32)),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, np.dtype(np.float16)),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16, np.dtype(np.uint16)),
}


@dataclass
class PlannedTensor:
    """One GGUF tensor: where its data comes from and how it is written.

    Duck-types the ndarray attributes ``GGUFWriter.add_tensor`` reads (shape, dtype, nbytes,
    tofile), so gguf-py writes it in its order with its padding while we stream the data.
    """

    name: str
    kind: gguf.MODEL_TENSOR
    shape: tuple[int, ...]  # row-major, like the checkpoint
    sources: list[Source]  # several for stacked experts; views for reshaped hybrid tensors
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

    def _encoded(self, job: tuple[Source, int, int]) -> np.ndarray:
        ref, start, rows = job
        return np.ascontiguousarray(self.encode(ref.read_rows(start, rows)))

    def encode(self, block: np.ndarray) -> np.ndarray:
        """float32 block -> the bytes of the output type (BF16 rounds to nearest even via gguf-py)."""
        if self.ggml_type == gguf.GGMLQuantizationType.BF16:
            return gguf.quants.quantize(block, gguf.GGMLQuantizationType.BF16)
        return block.astype(self.dtype, copy=False)


def plan_tensors(
    refs: dict[str, TensorRef], hp: HParams, outtype: str, mtp: MtpMode = "keep"
) -> list[PlannedTensor]:
    """Decide every output tensor: GGUF name, shape check, output type, data sources.

    ``hp`` is the one :func:`prepare` returned for these ``refs``; the architecture's family
    module (see .families) names, reshapes and checks the tensors.

    Raises:
        CheckpointError: a tensor has no GGUF name for this architecture, or one is missing.
        ShapeMismatchError: a tensor's shape disagrees with config.json.
    """
    family = family_of(hp.arch)
    planned = [
        PlannedTensor(n.gguf_name, n.kind, n.shape, n.sources, _ggml_type(n.kind, n.shape, hp, outtype))
        for n in family.name_tensors(refs, hp, mtp)
    ]
    family.check_complete({p.name for p in planned}, hp, mtp)
    return planned


def prepare(hp: HParams, refs: dict[str, TensorRef], mtp: MtpMode = "keep") -> HParams:
    """``hp`` completed from the checkpoint's tensors by its family (e.g. the MTP layers found)."""
    return family_of(hp.arch).prepare(hp, refs, mtp)


def _ggml_type(
    kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], hp: HParams, outtype: str
) -> gguf.GGMLQuantizationType:
    if len(shape) <= 1 or kind in hp.arch.f32_tensors:
        return gguf.GGMLQuantizationType.F32  # norms, biases, routers (and conv kernels) stay F32
    return OUTTYPES[outtype][0]


def parameter_count(planned: list[PlannedTensor]) -> int:
    return sum(int(np.prod(p.shape, dtype=np.int64)) for p in planned)


def describe(planned: list[PlannedTensor]) -> dict[str, Any]:
    """Counts per output ggml type (for reports)."""
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.ggml_type.name] = counts.get(p.ggml_type.name, 0) + 1
    return counts
