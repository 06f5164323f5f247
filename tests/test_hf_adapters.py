"""The generic Hugging Face adapters served by a real server: a tiny BERT classifier through
``transformers``, a tiny CLIP through ``sentence-transformers`` (text and image embeddings), a
tiny cross-encoder through ``/v1/rerank``, and the shipped MiniLM. The tiny models are built
offline by the test (random weights, ``save_pretrained``); every answer is checked against the
same model run directly in this process.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelmora.bench.server import ServerProcess

pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.slow

QUERY = "what is the capital of france"
DOCUMENTS = [
    "stock prices fell",
    "paris is the capital of france",
    "the cat sat on the mat",
    "a river bank",
    "what city is the capital",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelmora.testing.tinymodels import (
        tiny_bert_classifier,
        tiny_clip,
        tiny_cross_encoder,
        tiny_vit_classifier,
    )

    folder = tmp_path_factory.mktemp("tiny-models")
    return {
        "clf": tiny_bert_classifier(folder / "clf"),
        "clip": tiny_clip(folder / "clip"),
        "reranker": tiny_cross_encoder(folder / "reranker"),
        "vit": tiny_vit_classifier(folder / "vit"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny: dict[str, Path]) -> Iterator[Any]:
    cpu = {"device": "cpu", "keep_alive_s": 300}
    models = [
        {"name": "clf", "adapter": "transformers", "source": str(tiny["clf"]),
         "params": {"task": "text-classification"}, "max_batch_size": 8, "max_wait_ms": 20, **cpu},
        {"name": "clip", "adapter": "sentence-transformers", "source": str(tiny["clip"]),
         "max_batch_size": 8, "max_wait_ms": 5, **cpu},
        {"name": "reranker", "adapter": "cross-encoder", "source": str(tiny["reranker"]), **cpu},
        {"name": "minilm", "adapter": "sentence-transformers", **cpu},
        {"name": "vit", "adapter": "transformers", "source": str(tiny["vit"]),
         "params": {"task": "image-classification"}, **cpu},
    ]  # fmt: skip
    folder = tmp_path_factory.mktemp("hf-server")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = ServerProcess(folder, {"models": models}, env=env).start(timeout=180)
    yield proc
    proc.stop()


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((40, 48, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_transformers_pipeline_batches_and_matches_the_pipeline(
    server: Any, tiny: dict[str, Path]
) -> None:
    from transformers import pipeline

    texts = ["the cat sat on the mat", "stock prices fell", "hello world", "paris"]
    with server.client() as http, ThreadPoolExecutor(len(texts)) as pool:
        replies = list(
            pool.map(lambda t: http.post("/api/v1/models/clf/predict", json={"input": t}), texts)
        )
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        hf = {"inputs": "the cat", "parameters": {"top_k": 2}}
        both = http.post("/api/v1/models/clf/predict", json={"input": hf}).json()["output"]
        wrong = http.post("/v1/embeddings", json={"model": "clf", "input": "x"})
    direct = pipeline("text-classification", model=str(tiny["clf"]), device="cpu")
    for text, reply in zip(texts, replies, strict=True):
        got, (want,) = reply.json()["output"], direct([text])
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"])
    assert sorted(d["label"] for d in both) == ["negative", "positive"]
    assert wrong.status_code == 400
    assert "text-classification model" in wrong.json()["error"]["message"]


def test_sentence_transformers_embeds_texts_and_images(server: Any, tiny: dict[str, Path]) -> None:
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    png = _png(0)
    inputs = [
        "a photo of a cat",
        {"image": base64.b64encode(png).decode()},
        {"image": "data:image/png;base64," + base64.b64encode(_png(1)).decode()},
        {"text": "a red image"},
    ]
    with server.client() as http:
        reply = http.post("/v1/embeddings", json={"model": "clip", "input": inputs})
        assert reply.status_code == 200, reply.text
        bad = http.post("/v1/embeddings", json={"model": "clip", "input": [{"image": "nope!"}]})
    got = np.array([d["embedding"] for d in reply.json()["data"]])
    direct = SentenceTransformer(str(tiny["clip"]), device="cpu")
    texts = direct.encode(["a photo of a cat", "a red image"], normalize_embeddings=True)
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in (png, _png(1))]
    pics = direct.encode(images, normalize_embeddings=True)
    assert got.shape == (4, 16)
    assert np.allclose(got[[0, 3]], texts, atol=1e-4) and np.allclose(got[[1, 2]], pics, atol=1e-4)
    assert bad.status_code == 400 and "base64" in bad.json()["error"]["message"]


def test_rerank_orders_documents_as_the_cross_encoder_scores_them(
    server: Any, tiny: dict[str, Path]
) -> None:
    from sentence_transformers import CrossEncoder

    body = {"model": "reranker", "query": QUERY, "documents": DOCUMENTS}
    with server.client() as http:
        full = http.post("/v1/rerank", json=body)
        assert full.status_code == 200, full.text
        top = http.post("/v1/rerank", json={**body, "top_n": 2, "return_documents": True}).json()
        wrong = http.post("/v1/rerank", json={**body, "model": "minilm"})
    scores = CrossEncoder(str(tiny["reranker"]), device="cpu").predict(
        [(QUERY, d) for d in DOCUMENTS]
    )
    want = sorted(range(len(DOCUMENTS)), key=lambda i: -scores[i])
    results = full.json()["results"]
    assert [r["index"] for r in results] == want
    assert [r["relevance_score"] for r in results] == pytest.approx([scores[i] for i in want])
    assert "document" not in results[0] and full.json()["usage"]["total_tokens"] > 0
    assert [r["index"] for r in top["results"]] == want[:2]
    assert top["results"][0]["document"] == {"text": DOCUMENTS[want[0]]}
    assert wrong.status_code == 400 and "embedding model" in wrong.json()["error"]["message"]


def test_shipped_minilm_through_the_openai_client(server: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock prices fell."]
    vectors = np.array(
        [d.embedding for d in client.embeddings.create(model="minilm", input=texts).data]
    )
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_transformers_image_classification_takes_data_urls(
    server: Any, tiny: dict[str, Path]
) -> None:
    from PIL import Image
    from transformers import pipeline

    png = _png(3)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    with server.client() as http:
        reply = http.post("/api/v1/models/vit/predict", json={"input": url})
        assert reply.status_code == 200, reply.text
        path = http.post("/api/v1/models/vit/predict", json={"input": "/etc/hostname"})
    direct = pipeline("image-classification", model=str(tiny["vit"]), device="cpu")
    want = direct(Image.open(io.BytesIO(png)).convert("RGB"))
    got = reply.json()["output"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
    assert path.status_code == 400 and "base64" in path.json()["error"]["message"]
