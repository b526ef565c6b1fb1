"""Resolve ``SRC`` of ``edge-qwen convert``: a local checkpoint folder or a hub repo id.

Hub checkpoints are fetched with huggingface_hub's ``snapshot_download`` (its cache, HF_HOME and
HF_HUB_OFFLINE respected), limited to the files conversion reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError, DownloadError
from .metadata import Source

# What conversion reads from a hub repo (weights, configs, tokenizer, card for general.*).
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "README.md",
    "modules.json",  # sentence-transformers: the pooling of an embedding model (see .pooling)
    "*Pooling/config.json",
    "LICENSE",
]
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_source(src: str | Path, revision: str | None = None) -> Source:
    """Local folder as is; ``org/name`` downloaded (or taken from the cache) at ``revision``.

    Raises:
        CheckpointError: neither an existing folder nor a repo id.
        DownloadError: the hub is unreachable / offline and the files are not cached.
    """
    path = Path(src).expanduser()
    if path.is_dir():
        return Source(path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    if not REPO_ID.match(str(src)):
        raise CheckpointError(f"{src}: no such folder, and not a hub repo id like Qwen/Qwen3-0.6B")
    return _download(str(src), revision)


def _download(repo_id: str, revision: str | None) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as exc:
        raise DownloadError(
            f"{repo_id}@{revision or 'main'} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline or HF_HUB_OFFLINE=1). Download it on a connected machine "
            f"(`huggingface-cli download {repo_id}`) and copy the cache, or pass a local folder."
        ) from exc
    except HfHubHTTPError as exc:
        raise DownloadError(f"downloading {repo_id}: {exc}; check the repo id, revision and token") from exc
    # The snapshot folder is named by the commit hash: record it as the pinned revision.
    return Source(Path(folder), repo_id=repo_id, revision=Path(folder).name)
