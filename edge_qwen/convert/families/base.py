"""What every architecture family module provides, and the steps they share.

A family turns a checkpoint's tensors into GGUF tensors (names, shapes, transforms), checks that
every tensor its layers need is there, and writes the metadata only it has. llama.cpp's
``conversion/`` modules and mlx-lm's ``sanitize()`` are the model: one small module per family,
the pipeline the same for all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

import gguf

from ...errors import CheckpointError, ShapeMismatchError
from ..architectures import HParams
from ..safetensors import TensorRef
from ..views import ExpertColumns, TensorView

Source = TensorRef | TensorView | ExpertColumns
# What happens to a checkpoint's multi-token-prediction head: written with the model (as
# llama.cpp's converter does), left out, or written alone as a small drafting GGUF.
MtpMode = Literal["keep", "drop", "only"]
MTP_MODES: tuple[MtpMode, ...] = ("keep", "drop", "only")
# Checkpoint tensors that carry no weights llama.cpp uses.
IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclass
class Named:
    """One GGUF tensor decided: its kind, name, row-major shape and the data it streams from."""

    hf_name: str  # the checkpoint tensor it comes from (for messages)
    kind: gguf.MODEL_TENSOR
    gguf_name: str
    shape: tuple[int, ...]
    sources: list[Source]  # several for experts stacked into one 3-D tensor


class Family(Protocol):
    """A family module's hooks (see .transformer and .hybrid)."""

    def prepare(self, hp: HParams, refs: dict[str, TensorRef], mtp: MtpMode) -> HParams:
        """``hp`` completed from the checkpoint's tensors (e.g. MTP layers found); refuses
        a checkpoint its config.json does not describe."""
        ...

    def name_tensors(self, refs: dict[str, TensorRef], hp: HParams, mtp: MtpMode) -> list[Named]: ...

    def check_complete(self, names: set[str], hp: HParams, mtp: MtpMode) -> None: ...

    def add_metadata(self, writer: gguf.GGUFWriter, hp: HParams) -> None: ...


def gguf_name(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = ".weight") -> str:
    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=bid) if bid is not None else base) + suffix


def require(names: set[str], wanted: str) -> None:
    if wanted not in names:
        raise CheckpointError(f"checkpoint lacks the tensor that becomes {wanted}; it is incomplete")


def no_place(hf_name: str, hp: HParams) -> CheckpointError:
    return CheckpointError(
        f"checkpoint tensor {hf_name!r} has no place in a {hp.arch.gguf_name} GGUF; "
        "the checkpoint does not match its config.json architecture"
    )


def check_shape(hf_name: str, shape: tuple[int, ...], want: tuple[int, ...] | None) -> None:
    if want is not None and tuple(shape) != want:
        raise ShapeMismatchError(
            f"{hf_name}: shape {list(shape)} but config.json implies {list(want)}; "
            "config.json and the weights belong to different models"
        )


def group_experts(
    refs: dict[str, TensorRef], hp: HParams, pattern: re.Pattern[str]
) -> dict[str, list[TensorRef]]:
    """{hf name: sources}, per-expert ``…experts.E.up_proj.weight`` grouped as ``…experts.up_proj.weight``
    (stacked expert after expert while writing, never in memory); ``pattern`` names the groups."""
    grouped: dict[str, list[TensorRef]] = {}
    experts: dict[str, dict[int, TensorRef]] = {}
    for name, ref in refs.items():
        m = pattern.match(name)
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


def stacked_shape(sources: list[TensorRef]) -> tuple[int, ...]:
    first = sources[0].shape
    return tuple(first) if len(sources) == 1 else (len(sources), *first)
