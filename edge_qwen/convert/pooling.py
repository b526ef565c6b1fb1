"""Embedding and reranker checkpoints: the pooling llama.cpp runs, read as its converter reads it.

* A sentence-transformers checkpoint (Qwen3-Embedding) lists its modules in ``modules.json``; the
  ``Pooling`` module's ``config.json`` says how token states become one vector. Qwen3-Embedding
  sets ``pooling_mode_lasttoken``: the final-norm hidden state of the last token. Written as
  ``{arch}.pooling_type`` (MEAN / CLS / LAST); a mode llama.cpp cannot pool by, or a module that
  changes the vector after pooling (a ``Dense`` projection …), is refused.
* A Qwen3-Reranker is a plain ``Qwen3ForCausalLM``, recognised by its name (folder, hub repo,
  ``_name_or_path``) or its model card's ``# Qwen3-Reranker`` title. It scores a (query, document)
  pair by the next-token logits of "yes" and "no": llama.cpp's RANK pooling takes the last token's
  state through ``cls.output`` (those two rows of the output head) and a softmax, so the GGUF gets
  pooling RANK, the labels, the head and the prompt as the named chat template ``rerank``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from ..errors import CheckpointError, TokenizerError

if TYPE_CHECKING:
    from .architectures import HParams

P = gguf.PoolingType
# sentence-transformers' Pooling flags, tested in the order llama.cpp's converter tests them, then
# the single ``pooling_mode`` string newer configs may carry instead.
POOLING_FLAGS: tuple[tuple[str, gguf.PoolingType], ...] = (
    ("pooling_mode_mean_tokens", P.MEAN),
    ("pooling_mode_cls_token", P.CLS),
    ("pooling_mode_lasttoken", P.LAST),
)
POOLING_MODES: dict[str, gguf.PoolingType] = {"mean": P.MEAN, "cls": P.CLS, "lasttoken": P.LAST}
# sentence-transformers modules that leave the pooled vector as llama.cpp computes it (Normalize:
# the caller L2-normalises); any other module after the transformer would be silently dropped.
KEPT_MODULES = ("Transformer", "Pooling", "Normalize")

# Names and model-card titles llama.cpp's converter takes for a Qwen3-Reranker.
RERANK_HINTS = ("qwen3-reranker", "qwen3-vl-reranker")
RERANK_TITLES = ("# qwen3-reranker", "# qwen3-vl-reranker")
RERANK_CONFIG_HINTS = ("_name_or_path", "model_type")  # config.json keys whose values are searched
RERANK_LABELS = ("yes", "no")  # cls.output rows, in this order
RERANK_TEMPLATE_NAME = "rerank"
# The prompt the Qwen3-Reranker model card scores with, as llama.cpp's converter writes it.
RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the "
    "query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@dataclass(frozen=True)
class Pooling:
    """How the GGUF's context pools: the type, and for RANK the labels of its ``cls.output`` rows
    with their token ids (filled from the vocabulary by :func:`with_label_ids`)."""

    kind: gguf.PoolingType
    labels: tuple[str, ...] = ()
    label_ids: tuple[int, ...] = ()

    @property
    def rank(self) -> bool:
        return self.kind == P.RANK


def read_pooling(
    folder: Path, cfg: dict[str, Any], hf_arch: str, *, rerank: bool, aliases: Sequence[str] = ()
) -> Pooling | None:
    """The checkpoint's pooling: RANK for a Qwen3-Reranker (when ``rerank``: the architecture can
    be one), else the sentence-transformers Pooling module's, else None (a causal LM).

    ``aliases``: more names the checkpoint goes by (the hub repo's), besides the folder's.

    Raises:
        CheckpointError: modules.json or the Pooling config is malformed, names a mode llama.cpp
            cannot pool by, or lists a module that would change the pooled vector.
    """
    if rerank and is_reranker(folder, cfg, hf_arch, aliases):
        return Pooling(P.RANK, RERANK_LABELS)
    kind = _sentence_transformers_pooling(folder)
    return Pooling(kind) if kind is not None else None


def is_reranker(folder: Path, cfg: dict[str, Any], hf_arch: str, aliases: Sequence[str] = ()) -> bool:
    hints = [folder.name, *aliases, hf_arch, *(str(cfg.get(k) or "") for k in RERANK_CONFIG_HINTS)]
    if any(h in hint.lower() for hint in hints for h in RERANK_HINTS):
        return True
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace").lower()
        return any(title in text for title in RERANK_TITLES)
    return False


def _sentence_transformers_pooling(folder: Path) -> gguf.PoolingType | None:
    path = folder / "modules.json"
    if not path.is_file():
        return None
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{path}: not a list of sentence-transformers modules; it is corrupt")
    pooling_dir: str | None = None
    for module in modules:
        kind = str(module.get("type") or "")
        if not kind.endswith(KEPT_MODULES):
            raise CheckpointError(
                f"{path}: module {kind or module!r} changes the embedding after pooling, which a GGUF "
                f"cannot carry; edge-qwen converts {', '.join(KEPT_MODULES)} modules only"
            )
        if kind.endswith("Pooling") and pooling_dir is None:
            pooling_dir = str(module.get("path") or "")
    if pooling_dir is None:
        return None
    config_path = folder / pooling_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: the Pooling module's {config_path} is missing; download it too")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object; it is corrupt")
    for flag, pooled in POOLING_FLAGS:
        if config.get(flag):
            return pooled
    mode = config.get("pooling_mode")
    if isinstance(mode, str) and mode in POOLING_MODES:
        return POOLING_MODES[mode]
    asked = [k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode") and v]
    raise CheckpointError(
        f"{config_path}: pooling {', '.join(map(str, asked)) or 'none'} is not one llama.cpp runs; "
        f"edge-qwen converts {', '.join(POOLING_MODES)} pooling"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); download the file again") from exc


def with_label_ids(hp: HParams, tokens: Sequence[str]) -> HParams:
    """``hp`` with a RANK pooling's label token ids, looked up in the vocabulary (``tokens`` by id,
    from tokenizer.json), as transformers' ``convert_tokens_to_ids`` would.

    Raises:
        TokenizerError: a label is not a token of this vocabulary.
    """
    if hp.pooling is None or not hp.pooling.rank:
        return hp
    ids = {tok: i for i, tok in enumerate(tokens) if tok in hp.pooling.labels}
    missing = [label for label in hp.pooling.labels if label not in ids]
    if missing:
        raise TokenizerError(
            f"a Qwen3-Reranker scores by the tokens {', '.join(hp.pooling.labels)}, but the vocabulary "
            f"has no {', '.join(map(repr, missing))}; the tokenizer is not Qwen3's"
        )
    label_ids = tuple(ids[label] for label in hp.pooling.labels)
    return replace(hp, pooling=replace(hp.pooling, label_ids=label_ids))


def add_pooling(writer: gguf.GGUFWriter, pooling: Pooling) -> None:
    """``{arch}.pooling_type``; for RANK also the classifier labels and the ``rerank`` template."""
    writer.add_pooling_type(pooling.kind)
    if pooling.rank:
        writer.add_classifier_output_labels(list(pooling.labels))
        writer.add_chat_template([{"name": RERANK_TEMPLATE_NAME, "template": RERANK_TEMPLATE}])
