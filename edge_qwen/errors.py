"""Every exception edge-qwen raises on purpose, in one place.

Each class inherits from a built-in (``ValueError``, ``OSError``, ``RuntimeError`` …) so callers
can catch broadly, and each message names the problem *and* the way out. The CLI prints
``error: <message>`` and exits with status 2 for any :class:`EdgeQwenError`.
"""

from __future__ import annotations


class EdgeQwenError(Exception):
    """Base class of all edge-qwen errors."""


# --- conversion -------------------------------------------------------------------------------


class CheckpointError(EdgeQwenError, ValueError):
    """The Hugging Face checkpoint folder is incomplete or inconsistent."""


class UnsupportedArchitectureError(CheckpointError):
    """config.json names an architecture edge-qwen cannot convert."""

    def __init__(self, architecture: str, supported: list[str]) -> None:
        self.architecture = architecture
        self.supported = supported
        super().__init__(
            f"unsupported architecture {architecture!r}; edge-qwen converts {', '.join(supported)}. "
            "Use a Qwen2/Qwen2.5/Qwen3 (dense or MoE) checkpoint, or an official GGUF of this model."
        )


class SafetensorsError(CheckpointError):
    """A safetensors file is truncated, corrupt, or disagrees with its header."""


class ShapeMismatchError(CheckpointError):
    """A tensor's shape does not match what config.json implies."""


class TokenizerError(CheckpointError):
    """tokenizer.json / tokenizer_config.json are missing or inconsistent with config.json."""


class DownloadError(EdgeQwenError, OSError):
    """A hub download failed or is impossible offline."""


# --- GGUF files, quantization, evaluation ------------------------------------------------------


class GGUFFileError(EdgeQwenError, ValueError):
    """A GGUF file cannot be read (not GGUF, truncated, or missing required metadata)."""


class QuantizeError(EdgeQwenError, RuntimeError):
    """llama.cpp's quantizer refused or failed."""


class RequantizeRefusedError(QuantizeError):
    """The input is already quantized and re-quantizing was not explicitly allowed."""


# --- runtime ------------------------------------------------------------------------------------


class ModelLoadError(EdgeQwenError, RuntimeError):
    """llama.cpp could not load the model or create its context."""


class ContextOverflowError(EdgeQwenError, ValueError):
    """The prompt does not fit in the context window."""

    def __init__(self, prompt_tokens: int, n_ctx: int, *, at_least: bool = False) -> None:
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.at_least = at_least  # counted without tokenizing: a lower bound
        size = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        super().__init__(
            f"prompt is {size} tokens but the context holds {n_ctx}; "
            "load the model with a larger n_ctx, shorten the prompt, or pass truncate=True "
            "to keep the system prompt and the latest turns"
        )


class ModelClosedError(EdgeQwenError, RuntimeError):
    """The model was closed; load it again to generate."""


class QueueTimeoutError(EdgeQwenError, TimeoutError):
    """A request waited longer than its queue timeout for the model."""


class ConfigError(EdgeQwenError, ValueError):
    """Settings that cannot work together (e.g. quantized V cache without flash attention)."""


class ChatTemplateError(EdgeQwenError, ValueError):
    """The chat template cannot be compiled, or refused these messages (its raise_exception)."""


class GenerationError(EdgeQwenError, RuntimeError):
    """llama.cpp failed while evaluating tokens (llama_decode returned a fatal error)."""


# --- scheduler ----------------------------------------------------------------------------------


class BudgetExceededError(EdgeQwenError, MemoryError):
    """A model cannot fit the memory budget even after eviction, context shrink and KV quantization."""

    def __init__(self, what: str, required: int, available: int, suggestions: list[str]) -> None:
        self.required = required
        self.available = available
        self.suggestions = suggestions
        mib = 2**20
        ways = "; ".join(suggestions) or "raise the budget"
        super().__init__(
            f"{what} needs {required / mib:,.0f} MiB but only {available / mib:,.0f} MiB of the budget "
            f"can be made free; {ways}"
        )


class QueueFullError(EdgeQwenError, RuntimeError):
    """Too many requests are already waiting for a model."""


# --- registry -----------------------------------------------------------------------------------


class RegistryError(EdgeQwenError, ValueError):
    """models.yaml is malformed (an entry misses a field or has a value of the wrong kind)."""


class UnknownModelError(EdgeQwenError, LookupError):
    """A model name or quant that the registry does not list."""


class ModelNotCachedError(DownloadError):
    """The model is not in the local cache and cannot be fetched (offline, or not pulled yet)."""


class ChecksumError(DownloadError):
    """A downloaded or assembled file does not match its registered size, sha256 or GGUF magic."""


class ModelTooLargeError(EdgeQwenError, ValueError):
    """The memory estimator says the model cannot run under the requested budget or device."""


# --- LoRA adapters ------------------------------------------------------------------------------


class AdapterError(EdgeQwenError, ValueError):
    """A PEFT adapter folder is incomplete or inconsistent (config, tensor names, ranks)."""


class UnsupportedAdapterError(AdapterError):
    """The adapter uses a PEFT feature llama.cpp's LoRA cannot run (DoRA, biases, modules_to_save …)."""


class AdapterShapeError(AdapterError):
    """A LoRA tensor's rank or shape disagrees with adapter_config.json or with the base model."""


class AdapterBaseMismatchError(AdapterError):
    """The adapter was trained on a different base architecture than the one it is paired with."""


class AdapterLoadError(ModelLoadError):
    """llama.cpp could not load a GGUF LoRA adapter onto a model."""


# --- installation ---------------------------------------------------------------------------


class ServerBindError(EdgeQwenError, OSError):
    """``serve`` cannot listen on the asked address (port in use, not allowed, no such address)."""


class MissingExtraError(EdgeQwenError, ImportError):
    """A command needs an optional extra (e.g. the server's) that is not installed."""


class ModelFileChangedError(ModelNotCachedError, ChecksumError):
    """A cached model file no longer matches the size/sha256 recorded when it was pulled."""


# --- multimodal conversion ----------------------------------------------------------------------


class MultimodalNotSupportedError(UnsupportedArchitectureError):
    """A multimodal Qwen architecture (e.g. Qwen3-VL) that edge-qwen cannot convert yet."""

    def __init__(self, architecture: str, supported: list[str]) -> None:
        super().__init__(architecture, supported)
        self.args = (
            f"{architecture} is not supported yet; edge-qwen converts {', '.join(supported)}. "
            "Use an official GGUF + mmproj of this model, or convert it with llama.cpp's "
            "convert_hf_to_gguf.py (once with --mmproj).",
        )


class DraftModelError(ModelLoadError):
    """A draft model that cannot draft for its target (another vocabulary) or could not be loaded."""


# --- media input (images, audio) ----------------------------------------------------------------


class MediaError(EdgeQwenError, ValueError):
    """An image or audio part of a message cannot be used. ``status`` is the HTTP code to answer."""

    status = 400


class UnsupportedMediaError(MediaError):
    """A content part type, URL scheme or file format edge-qwen does not accept."""


class RemoteMediaError(UnsupportedMediaError):
    """An ``http(s)://`` media URL: edge-qwen never fetches from the network."""


class LocalMediaRefusedError(MediaError):
    """A local path or ``file://`` URL where the policy forbids reading files (the server)."""


class MediaDecodeError(MediaError):
    """The bytes are not a valid image / audio file of the claimed format (corrupt or truncated)."""


class MediaTooLargeError(MediaError):
    """A media limit was exceeded: encoded bytes, decoded pixels, audio seconds or items per request."""

    status = 413

    def __init__(self, what: str, actual: float, limit: float, way_out: str) -> None:
        self.what = what
        self.actual = actual
        self.limit = limit
        super().__init__(f"{what} is {actual:,.6g} but the limit is {limit:,.6g}; {way_out}")


class MediaMarkerError(MediaError):
    """Message text contains the media placeholder itself, which would misplace the media."""


# --- RPC workers (llama.cpp's RPC backend) --------------------------------------------------------


class RpcError(EdgeQwenError, ValueError):
    """An RPC worker address or setting is not usable (a malformed HOST:PORT, a public bind
    without --allow-remote, a build without llama.cpp's RPC backend)."""


class RpcWorkerError(EdgeQwenError, ConnectionError):
    """An RPC worker is down, busy with another main host, or speaks another protocol version."""
