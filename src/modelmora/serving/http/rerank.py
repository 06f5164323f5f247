"""``POST /v1/rerank``: documents ordered by their relevance to a query, in the shape the field
uses (Cohere, Jina, TEI)::

    {"model": "reranker", "query": "...", "documents": ["...", {"text": "..."}],
     "top_n": 3, "return_documents": true}
    → {"model": "reranker", "results": [{"index": 2, "relevance_score": 0.93,
                                         "document": {"text": "..."}}, ...],
       "usage": {"total_tokens": ...}}

Results are sorted by ``relevance_score``, highest first; ``index`` is the document's position in
the request. The model is a ``cross-encoder`` (any adapter whose capabilities list this route):
its output for ``{"query", "documents"}`` is one score per document.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request

from modelmora.models.llm import estimate_tokens
from modelmora.serving.http.bodies import RerankRequest
from modelmora.serving.http.errors import ApiError
from modelmora.serving.http.state import Serving

__all__ = ["ROUTE", "add_rerank_routes", "rerank_results"]

ROUTE = "/v1/rerank"


def rerank_results(
    scores: list[float], documents: list[str], top_n: int | None, return_documents: bool
) -> list[dict[str, Any]]:
    """The ``results`` list: the ``top_n`` best documents, highest score first (ties: in order).

    Raises:
        ApiError: 500 when the model answered a different number of scores than documents.
    """
    if len(scores) != len(documents):
        message = f"the model gave {len(scores)} scores for {len(documents)} documents"
        raise ApiError(500, message, "server_error", "bad_model_output")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        entry: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            entry["document"] = {"text": documents[i]}
        results.append(entry)
    return results


def add_rerank_routes(app: FastAPI) -> None:
    """Register ``POST /v1/rerank``."""

    @app.post(ROUTE, tags=["rerank"])
    async def rerank(request: Request, body: RerankRequest) -> dict[str, Any]:
        state: Serving = request.app.state.modelmora
        state.adapter(body.model, ROUTE)
        documents = body.texts()
        (scores,) = await state.run(body.model, [{"query": body.query, "documents": documents}])
        tokens = sum(estimate_tokens(body.query) + estimate_tokens(d) for d in documents)
        return {
            "id": uuid.uuid4().hex,
            "model": body.model,
            "results": rerank_results(scores, documents, body.top_n, body.return_documents),
            "usage": {"total_tokens": tokens},
        }
