"""``POST /v1/embeddings`` (OpenAI's shape) and ``POST /v1/rerank`` (llama-server's shape).

Both lease the model like a chat request and run one ``embed`` request per input through the
model's step loop (:mod:`edge_qwen.runtime.embedding`), so a list is prefilled across the slots
together and a long input never blocks the chats of other clients for more than a step.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..runtime.embedding import as_matrix
from .http_errors import APIError
from .request_log import RequestContext

if TYPE_CHECKING:
    from ..runtime import Model
    from .app import _Server

MAX_INPUTS = 256  # inputs per request: each is a prefill on the compute thread


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if len(texts) > MAX_INPUTS:
            raise ValueError(
                f"input: at most {MAX_INPUTS} texts per request (got {len(texts)}); split the list"
            )
        return texts


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, max_length=MAX_INPUTS)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False


async def embeddings(server: _Server, request: Request, ctx: RequestContext) -> Response:
    key = server.authorize(request)
    server.rate_limit(request, key)
    body = await server.read_json(request, EmbeddingRequest)
    try:
        texts = body.texts()
    except ValueError as exc:
        raise APIError(400, str(exc), param="input") from None
    ctx.model = body.model

    async def run(model: Model) -> tuple[np.ndarray, int]:
        specs = await asyncio.get_running_loop().run_in_executor(
            server.renderers, model.prepare_embeddings, texts
        )
        return await model.apooled(specs, normalize=True), sum(len(s.tokens) for s in specs)

    vectors, n_tokens = await _leased(server, body.model, run)
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:  # Matryoshka: cut, renormalise
        vectors = as_matrix([tuple(v) for v in vectors[:, : body.dimensions]], True)
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


async def rerank(server: _Server, request: Request, ctx: RequestContext) -> Response:
    key = server.authorize(request)
    server.rate_limit(request, key)
    body = await server.read_json(request, RerankRequest)
    ctx.model = body.model

    async def run(model: Model) -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        specs = await loop.run_in_executor(server.renderers, model.prepare_rerank, body.query, body.documents)
        scores = [float(v) for v in (await model.apooled(specs))[:, 0]]
        return scores, sum(len(s.tokens) for s in specs)

    scores, n_tokens = await _leased(server, body.model, run)
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: body.top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        row: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            row["document"] = {"text": body.documents[i]}
        results.append(row)
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return JSONResponse({"model": body.model, "object": "list", "usage": usage, "results": results})


async def _leased(server: _Server, name: str, run: Any) -> Any:
    with server.admission():
        async with server.provider.lease(name) as model:
            return await run(model)


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # OpenAI's: the float32 values' little-endian bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
