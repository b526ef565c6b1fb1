"""``edge-qwen serve`` — an OpenAI-compatible HTTP API over local GGUF models.

Models go through the memory-budget scheduler (loaded on demand, evicted LRU when the budget is
tight, requests queued FIFO per model). Loopback only by default; binding another address without
an API key prints a warning. Ctrl-C / SIGTERM stop accepting connections, let running requests
finish for ``--drain-timeout`` seconds, then cancel the rest and free the models.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ServerBindError
from ..rpc import is_loopback  # one rule for every listening socket
from ._types import positive_int, tcp_port

API_KEY_ENV = "EDGE_QWEN_API_KEY"
_RATE_UNITS = {"s": 60.0, "sec": 60.0, "m": 1.0, "min": 1.0, "h": 1 / 60, "hour": 1 / 60}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback)")
    parser.add_argument("--port", type=tcp_port, default=8080, help="TCP port (default 8080)")
    parser.add_argument(
        "--models",
        action="append",
        required=True,
        metavar="MODEL[,MODEL...]",
        help="GGUF paths or registry names (name[:quant]) to serve, optionally NAME=MODEL "
        "(a file's API name defaults to its name without .gguf)",
    )
    parser.add_argument("--budget", default=None, help="memory budget, e.g. 3GB (default: available RAM)")
    parser.add_argument(
        "--parallel", type=positive_int, default=None,
        help="sequences each model decodes together (default: 4 on a desktop CPU, 8 with 8+ cores)",
    )  # fmt: skip
    parser.add_argument(
        "--ctx", type=positive_int, default=None,
        help="KV cells per model, shared by its parallel sequences (default 1024 x parallel, at least 4096)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads (default: physical cores)"
    )
    parser.add_argument(
        "--prompt-cache", default="128MiB", metavar="SIZE",
        help="host memory per model for K/V the slots give up, restored when a conversation returns "
        "(default 128MiB; 0 turns it off; charged to the budget)",
    )  # fmt: skip
    parser.add_argument(
        "--prompt-cache-dir", default=None, metavar="DIR",
        help="also keep those caches (and each slot's at shutdown) in DIR, so conversations survive a "
        "restart; a file of another model or llama.cpp build is never loaded",
    )  # fmt: skip
    parser.add_argument(
        "--prompt-cache-disk", default="2GiB", metavar="SIZE", help="the most --prompt-cache-dir holds (2GiB)"
    )
    parser.add_argument(
        "--lora", action="append", default=[], metavar="[BASE:]NAME=FILE[:SCALE]",
        help="serve a GGUF LoRA adapter on a model as BASE:NAME (BASE may be left out with one model)",
    )  # fmt: skip
    parser.add_argument(
        "--draft", action="append", default=[], metavar="[MODEL=]FILE",
        help="a smaller GGUF with the same tokenizer that drafts for MODEL (speculative decoding, same "
        "output); MODEL may be left out with one model",
    )  # fmt: skip
    parser.add_argument(
        "--mtp", action="store_true",
        help="models whose GGUF has a multi-token-prediction head (Qwen3.5, Qwen3-Next) draft with it "
        "(speculative decoding, same output); models without one are served as they are",
    )  # fmt: skip
    from ._runtime_args import add_rpc_argument

    add_rpc_argument(parser, per_model=True)
    parser.add_argument(
        "--mmproj", action="append", default=[], metavar="[MODEL=]FILE",
        help="the vision/audio projector GGUF of MODEL (from edge-qwen convert), so requests may carry "
        "images or audio; MODEL may be left out with one model",
    )  # fmt: skip
    parser.add_argument(
        "--allow-remote-media", action="store_true",
        help="fetch http(s) image URLs in requests (never from private, loopback or link-local addresses); "
        "default: only inline data: URLs",
    )  # fmt: skip
    parser.add_argument(
        "--lookup", action="store_true",
        help="speculative decoding by prompt lookup for requests (on models without --draft)",
    )  # fmt: skip
    parser.add_argument(
        "--api-key", default=None, help=f"require this bearer key (default: ${API_KEY_ENV} if set)"
    )
    parser.add_argument(
        "--max-concurrency", type=positive_int, default=64,
        help="requests admitted at once, queued or running (64)"
    )
    parser.add_argument(
        "--queue-timeout", type=float, default=300.0, help="seconds a request may wait for its model (300)"
    )
    parser.add_argument(
        "--rate", default=None, help="per-client rate limit, e.g. 60/min or 2/s (default off)"
    )
    parser.add_argument("--max-body", default="1MB", help="largest request body (default 1MB)")
    parser.add_argument(
        "--max-messages", type=positive_int, default=256, help="most messages per chat request (256)"
    )
    parser.add_argument(
        "--max-prompt-tokens", type=positive_int, default=None, help="most prompt tokens (default n_ctx)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish requests on stop"
    )
    parser.add_argument(
        "--max-connections", type=positive_int, default=256,
        help="open connections at once (256); a client must send its request headers within 10 s",
    )  # fmt: skip
    parser.add_argument("--no-preload", action="store_true", help="load models on their first request")
    parser.add_argument(
        "--log-prompts", action="store_true", help="debug: log raw prompts (default: only a hash of them)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--allowed-hosts", default=None, metavar="NAME[,NAME...]",
        help="Host names the server answers to (default: localhost, 127.0.0.1, ::1 and --host; any name "
        "when --host is 0.0.0.0 or ::); others get 403, which stops DNS-rebinding pages",
    )  # fmt: skip
    parser.add_argument(
        "--allowed-origins", default=None, metavar="ORIGIN[,ORIGIN...]",
        help="web pages of other sites that may call the server, e.g. http://localhost:3000 (default: none)",
    )  # fmt: skip


def parse_rate(text: str | None) -> tuple[float, int] | None:
    """(requests per minute, burst) from ``60``, ``60/min``, ``2/s`` or ``100/hour``: ``N/unit`` lets
    a client send N requests at once, then N per unit (``2/s``: a burst of 2, 120 a minute)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*", text.lower())
    unit = (match.group(2) or "min") if match else None
    if match is None or unit not in _RATE_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--rate {text!r} is not a rate; write it like 60/min, 2/s or 100/hour")
    count = float(match.group(1))
    return count * _RATE_UNITS[unit], max(1, math.ceil(count))


def parse_models(values: list[str]) -> dict[str, Path]:
    """``PATH``, registry ``name[:quant]`` or ``NAME=PATH|SPEC`` items (comma-separated or repeated).

    A file is served under its file name without ``.gguf``; a registry model under its spec
    (resolved to the cached GGUF, never downloaded here: ``edge-qwen pull`` does that).
    """
    from ..registry import resolve_model
    from ..registry.catalog import looks_like_spec
    from ..server.provider import model_name

    models: dict[str, Path] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep:
            target = item
            name = item if looks_like_spec(item) and not Path(item).exists() else model_name(item)
        path = resolve_model(target)
        if not path.is_file():
            raise ConfigError(
                f"--models: {target} is neither a .gguf file nor a downloaded registry model; "
                "pass a GGUF path, NAME=PATH, or a name from `edge-qwen models`"
            )
        if name in models:
            raise ConfigError(f"--models: two models are named {name!r}; name them with NAME=PATH")
        models[name] = path
    if not models:
        raise ConfigError("--models is empty; pass at least one .gguf path or registry model name")
    return models


def parse_loras(
    values: list[str], models: dict[str, Path]
) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, dict[str, float]]]]:
    """``--lora`` items: adapters to load per base model, and the API names that route to them."""
    from ._runtime_args import parse_lora

    files: dict[str, dict[str, str]] = {name: {} for name in models}
    routes: dict[str, tuple[str, dict[str, float]]] = {}
    for item in values:
        target, sep, spec = item.partition("=")
        base, colon, name = target.rpartition(":")
        if not colon and len(models) == 1:
            base = next(iter(models))
        if not sep or not name or base not in models:
            raise ConfigError(
                f"--lora {item!r}: write NAME=FILE[:SCALE] (with one model) or BASE:NAME=FILE[:SCALE], "
                f"BASE one of {sorted(models)}"
            )
        path, scale = parse_lora(spec)
        files[base][name] = path
        routes[f"{base}:{name}"] = (base, {name: scale})
    return files, routes


def parse_drafts(values: list[str], models: dict[str, Path]) -> dict[str, str]:
    """``--draft`` items: the draft GGUF of each model that has one."""
    from ..registry import resolve_model

    drafts: dict[str, str] = {}
    for name, target in _model_files("--draft", values, models).items():
        path = resolve_model(target)
        if not path.is_file():
            raise ConfigError(f"--draft: {target} is neither a .gguf file nor a downloaded registry model")
        drafts[name] = str(path)
    return drafts


def has_mtp_head(path: str | Path) -> bool:
    """Whether a GGUF carries a multi-token-prediction head (nextn layers) to draft with."""
    from ..gguf_header import read_header
    from ..sizing.shape import model_shape

    return model_shape(read_header(path)).n_nextn > 0


def parse_mmprojs(values: list[str], models: dict[str, Path]) -> dict[str, str]:
    """``--mmproj`` items: the projector GGUF of each model that takes images or audio."""
    projectors: dict[str, str] = {}
    for name, target in _model_files("--mmproj", values, models).items():
        if not Path(target).is_file():
            raise ConfigError(
                f"--mmproj: {target} is not a file; pass the mmproj GGUF that edge-qwen convert wrote "
                "next to the model (mmproj-*.gguf)"
            )
        projectors[name] = target
    return projectors


def _model_files(
    option: str, values: list[str], models: dict[str, Path], what: str = "FILE"
) -> dict[str, str]:
    """``[MODEL=]VALUE`` items of ``option`` as {model: value}; MODEL may be left out with one model."""
    files: dict[str, str] = {}
    for item in values:
        name, sep, target = item.partition("=")
        if not sep:
            name, target = (next(iter(models)) if len(models) == 1 else ""), item
        if name not in models or not target:
            raise ConfigError(
                f"{option} {item!r}: write {what} (with one model) or MODEL={what}, MODEL one of "
                f"{sorted(models)}"
            )
        if name in files:
            raise ConfigError(f"{option}: model {name!r} is given two; pass one")
        files[name] = target
    return files


def media_policy(allow_remote: bool) -> Any:
    """The server's media policy: never local files; http(s) URLs only with ``--allow-remote-media``,
    then through the SSRF-guarded fetcher."""
    from ..runtime.media.content import SERVER_POLICY
    from ..runtime.media.media_fetch import RemoteFetcher

    return dataclasses.replace(SERVER_POLICY, fetch=RemoteFetcher()) if allow_remote else SERVER_POLICY


_FILES_BESIDE_CONNECTIONS = 256  # model files, RPC sockets, the listener, logs


def serve_shape(parallel: int | None, n_ctx: int | None) -> tuple[int, int]:
    """``--parallel`` and ``--ctx``, or their defaults for this machine."""
    from .._llama import physical_cores
    from ..sizing.device import default_parallel

    p = default_parallel(physical_cores()) if parallel is None else parallel
    if p < 1:
        raise ConfigError(f"--parallel {p}: a model needs at least one sequence slot")
    return p, n_ctx if n_ctx is not None else max(4096, 1024 * p)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from ..registry.store import partner_mmproj
    from ..scheduler import Scheduler
    from ..server import ServerConfig, create_app, security
    from ..server.connections import ConnectionLimits, raise_open_file_limit, uvicorn_options
    from ..server.provider import SchedulerProvider
    from ..sizing import parse_size

    models = parse_models(args.models)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    rate = parse_rate(args.rate)
    config = ServerConfig(
        api_key=api_key,
        rate_per_min=rate[0] if rate else None,
        rate_burst=rate[1] if rate else None,
        max_body_bytes=parse_size(args.max_body),
        max_messages=args.max_messages,
        max_prompt_tokens=args.max_prompt_tokens,
        max_concurrency=args.max_concurrency,
        log_prompts=args.log_prompts,
        media_policy=media_policy(args.allow_remote_media),
        allowed_hosts=security.hosts_for(args.host, args.allowed_hosts),
        allowed_origins=security.origins(args.allowed_origins),
    )
    _setup_logging(args.log_level)
    if not is_loopback(args.host) and api_key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach this address can use "
            f"the models. Pass --api-key or set ${API_KEY_ENV}",
            file=sys.stderr,
        )
    parallel, n_ctx = serve_shape(args.parallel, args.ctx)
    from ..sizing.device import parse_size

    prompt_cache = parse_size(args.prompt_cache)
    adapters, routes = parse_loras(args.lora, models)
    drafts = parse_drafts(args.draft, models)
    projectors = parse_mmprojs(args.mmproj, models)
    workers = _model_files("--rpc", args.rpc, models, "HOST:PORT[,HOST:PORT...]")
    for name, path in models.items():  # a converted vision/audio model brings its own projector
        partner = partner_mmproj(path) if name not in projectors else None
        if partner is not None:
            projectors[name] = str(partner)
    scheduler = Scheduler(args.budget, max_queue=args.max_concurrency, queue_timeout=args.queue_timeout)
    provider = SchedulerProvider(scheduler, max_waiting=args.max_concurrency, routes=routes)
    try:
        for name, path in models.items():
            scheduler.add(
                name, path, n_ctx=n_ctx, n_threads=args.threads, parallel=parallel, adapters=adapters[name],
                draft=drafts.get(name), speculative="lookup" if args.lookup and name not in drafts else None,
                mtp=args.mtp and name not in drafts and has_mtp_head(path),
                mmproj=projectors.get(name), prompt_cache=prompt_cache, rpc=workers.get(name, ()),
                prompt_cache_dir=args.prompt_cache_dir, prompt_cache_disk=parse_size(args.prompt_cache_disk),
                tensor_split=args.tensor_split if name in workers else None,
            )  # fmt: skip
        if not args.no_preload:
            scheduler.load(next(iter(models)))
        app = create_app(provider, config)
        sock = listen(args.host, args.port)
        limits = ConnectionLimits(max_connections=args.max_connections)
        raise_open_file_limit(limits.max_connections + _FILES_BESIDE_CONNECTIONS)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout,
                access_log=False,
                **uvicorn_options(limits),
            )
        )
        if not args.json:
            print(
                f"edge-qwen: serving {', '.join(models)} on http://{args.host}:{args.port}/v1",
                file=sys.stderr,
            )
        with _sigterm_means_done(), sock:
            server.run(sockets=[sock])
    finally:
        _stop(provider.close(timeout=args.drain_timeout), args.drain_timeout)
    return {"host": args.host, "port": args.port, "models": {n: str(p) for n, p in models.items()}}


def _stop(busy: list[str], waited: float) -> None:
    """After the models were closed: if some are still inside llama.cpp (a step that never returns,
    e.g. on an RPC worker that stopped answering), end the process now instead of waiting on them
    for ever: the operating system frees their memory, and exiting normally would run llama.cpp's
    teardown under a thread that is still using it."""
    if not busy:
        return
    print(
        f"edge-qwen: {', '.join(busy)} still busy in llama.cpp {waited:g} s after the stop (a stuck "
        "step, e.g. an RPC worker that stopped answering); exiting without waiting for it",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(0 if sys.exc_info()[0] is None else 1)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, made before uvicorn starts so that a port in use (or an
    address this machine does not have) is one clear error instead of uvicorn's log and exit.

    Raises:
        ServerBindError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerBindError(f"cannot serve on {host}:{port}: {exc.strerror}; check --host") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "pick another --port or stop what listens there" if exc.errno == errno.EADDRINUSE else (
            "use a port >= 1024 or run with the privilege to bind it" if exc.errno == errno.EACCES
            else "check --host and --port"
        )  # fmt: skip
        raise ServerBindError(f"cannot serve on {host}:{port}: {exc.strerror}; {hint}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _sigterm_means_done() -> Iterator[None]:
    """After draining, uvicorn re-raises the signal it caught; for SIGTERM that would kill the
    process before the models are freed. Treat it as a normal stop instead (exit status 0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _setup_logging(level: str) -> None:
    logger = logging.getLogger("edge_qwen.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
