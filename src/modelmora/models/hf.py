"""Generic adapters for the Hugging Face ecosystem: ``transformers`` pipelines,
``sentence-transformers`` embeddings (text and images) and cross-encoder rerankers.

Each takes ``model`` (a hub id or a local folder: the config's ``source``) and ``device``; the
frameworks are imported in ``load()`` only, so the server reads these classes' capabilities
without importing torch.

* ``transformers`` (:class:`PipelineAdapter`): any ``transformers.pipeline`` task by name
  (``params: {task: text-classification}``). An input is the pipeline's input, or the Hugging
  Face Inference API's ``{"inputs": ..., "parameters": {...}}`` (zero-shot labels, top_k...);
  a batch with the same parameters runs as one pipeline call of ``batch_size`` = its size.
  Image tasks take images as base64 or ``data:`` URLs.
* ``sentence-transformers`` (:class:`SentenceTransformerAdapter`): embeddings of texts and,
  for CLIP-style models, of images (``{"image": base64 or data URL}``); one vector per input.
* ``cross-encoder`` (:class:`CrossEncoderAdapter`): ``{"query": str, "documents": [str]}`` →
  one relevance score per document (what ``/v1/rerank`` serves).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from modelmora.models import Adapter, Capabilities, check_device, resolve_device
from modelmora.models.embedding import EmbeddingAdapter

__all__ = [
    "IMAGE_TASKS",
    "CrossEncoderAdapter",
    "PipelineAdapter",
    "SentenceTransformerAdapter",
    "decode_image",
    "to_jsonable",
]

logger = logging.getLogger(__name__)

#: ``transformers`` pipeline tasks whose inputs are images (decoded from base64 / data URLs).
IMAGE_TASKS = frozenset(
    {
        "image-classification",
        "image-feature-extraction",
        "image-segmentation",
        "image-to-text",
        "object-detection",
        "zero-shot-image-classification",
        "zero-shot-object-detection",
        "depth-estimation",
    }
)


def decode_image(data: Any) -> Any:
    """A PIL image from base64 text or a ``data:image/...;base64,`` URL.

    Paths and http(s) URLs are refused: a client must not make the worker read files or fetch.

    Raises:
        ValueError: not a string, not base64, or not an image PIL can read.
    """
    if not isinstance(data, str):
        raise ValueError(f"an image must be base64 text or a data URL, got {type(data).__name__}")
    payload = data
    if data.startswith("data:"):
        header, sep, payload = data.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("an image data URL must be 'data:image/...;base64,<data>'")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an image must be base64 text or a base64 data URL") from None
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"the image cannot be read: {exc}") from None
    return image.convert("RGB")


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy arrays/scalars and torch tensors turned into lists and numbers."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # e.g. a PIL image from an image-to-image task: not served as JSON


class PipelineAdapter(Adapter):
    """Any ``transformers.pipeline`` task, batched.

    Args:
        task: the pipeline task (``text-classification``, ``token-classification``,
            ``zero-shot-classification``, ``image-classification``, ``feature-extraction``,
            ``summarization``...).
        model: a hub id or a local folder (the config's ``source``).
        device: ``auto``, ``cpu`` or ``cuda``.
        parameters: default call parameters, merged under each input's own.
        pipeline_kwargs: extra keyword arguments for ``transformers.pipeline``.

    Raises:
        ValueError: no task, or an unknown device.
    """

    capabilities = Capabilities(
        task="transformers", takes_device=True, takes_source=True, frameworks=("transformers",)
    )

    @classmethod
    def prewarm(cls) -> list[str]:
        """transformers' conversion table (built on the first load of any model)."""
        from modelmora.models.prewarm import prewarm_transformers

        return prewarm_transformers()

    @classmethod
    def describe(cls, params: Mapping[str, Any]) -> Capabilities:
        """The task is the pipeline's: ``params.task``."""
        task = params.get("task")
        if not isinstance(task, str) or not task:
            raise ValueError(
                "the transformers adapter needs params.task: a transformers.pipeline task "
                "such as text-classification, zero-shot-classification, image-classification"
            )
        return Capabilities(
            task=task, takes_device=True, takes_source=True, frameworks=("transformers", "torch")
        )

    def __init__(
        self,
        task: str,
        model: str | None = None,
        device: str = "auto",
        parameters: dict[str, Any] | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.describe({"task": task})
        self.task, self.model_name = task, model
        self.device = check_device(device)
        self.parameters = dict(parameters or {})
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        self.pipe: Any = None

    def load(self) -> None:
        import transformers

        factory: Any = transformers.pipeline  # typed per task; the task is data here
        device = resolve_device(self.device)
        self.pipe = factory(self.task, model=self.model_name, device=device, **self.pipeline_kwargs)

    def predict(self, batch: list[Any]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        inputs: list[Any] = []
        params: list[dict[str, Any]] = []
        for i, item in enumerate(batch):
            value, extra = self._split(item)
            inputs.append(value)
            params.append(extra)
            groups.setdefault(json.dumps(extra, sort_keys=True, default=str), []).append(i)
        outputs: list[Any] = [None] * len(batch)
        for indexes in groups.values():
            values = [inputs[i] for i in indexes]
            results = self.pipe(values, batch_size=len(values), **params[indexes[0]])
            if len(values) == 1 and not _per_input(results, 1):
                results = [results]
            for i, result in zip(indexes, results, strict=True):
                outputs[i] = to_jsonable(result)
        return outputs

    def _split(self, item: Any) -> tuple[Any, dict[str, Any]]:
        """(the pipeline input, its call parameters) of one request item."""
        extra = dict(self.parameters)
        if isinstance(item, dict) and "inputs" in item:
            given = item.get("parameters") or {}
            if not isinstance(given, dict):
                raise ValueError("parameters must be an object of pipeline call arguments")
            extra.update(given)
            item = item["inputs"]
        if item is None or item == "" or item == []:
            raise ValueError(f"the {self.task} pipeline needs a non-empty input")
        if self.task in IMAGE_TASKS:
            item = decode_image(item)
        return item, extra


def _per_input(results: Any, n: int) -> bool:
    return isinstance(results, list) and len(results) == n


class SentenceTransformerAdapter(EmbeddingAdapter):
    """Embeddings of texts and images (CLIP-style models) with sentence-transformers.

    An input is a text, ``{"text": ...}`` or ``{"image": base64 or data URL}``; texts and
    images of one batch are encoded in one call per modality. Args as
    :class:`~modelmora.models.embedding.EmbeddingAdapter` (no model: the shipped MiniLM).
    """

    capabilities = replace(EmbeddingAdapter.capabilities)

    def predict(self, batch: list[Any]) -> list[Any]:
        texts: list[tuple[int, str]] = []
        images: list[tuple[int, Any]] = []
        for i, item in enumerate(batch):
            if isinstance(item, str):
                texts.append((i, item))
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append((i, item["text"]))
            elif isinstance(item, dict) and "image" in item:
                images.append((i, decode_image(item["image"])))
            else:
                raise ValueError(
                    "an embedding input is a text, {'text': ...} or {'image': base64/data URL}"
                )
        outputs: list[Any] = [None] * len(batch)

        def fill(group: list[tuple[int, Any]], vectors: Any) -> None:
            for (i, _), vector in zip(group, vectors, strict=True):
                outputs[i] = vector.tolist()

        if texts:  # under ONNX Runtime when the model was loaded so
            fill(texts, self.encode_texts([text for _, text in texts]))
        if images:
            pictures = [image for _, image in images]
            fill(
                images,
                self.model.encode(
                    pictures, batch_size=len(pictures), normalize_embeddings=self.normalize
                ),
            )
        return outputs


class CrossEncoderAdapter(Adapter):
    """Reranking with a sentence-transformers ``CrossEncoder``.

    An input is ``{"query": str, "documents": [str, ...]}``; its output is one score per
    document, in the documents' order (``CrossEncoder.predict`` of the (query, document)
    pairs; all pairs of a batch go through the model together).

    Args:
        model: a hub id or a local folder (the config's ``source``).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_length: longest (query, document) pair in tokens (``None``: the model's).
    """

    capabilities = Capabilities(
        task="rerank",
        routes=("/v1/rerank",),
        takes_device=True,
        takes_source=True,
        frameworks=("sentence_transformers", "torch"),
        warmup={"query": "warm-up", "documents": ["warm-up"]},
    )

    @classmethod
    def prewarm(cls) -> list[str]:
        """transformers' conversion table (built on the first load of any model)."""
        from modelmora.models.prewarm import prewarm_transformers

        return prewarm_transformers()

    def __init__(
        self, model: str | None = None, device: str = "auto", max_length: int | None = None
    ) -> None:
        if not model:
            raise ValueError("the cross-encoder adapter needs a source: a hub id or a folder")
        self.model_name, self.device, self.max_length = model, check_device(device), max_length
        self.model: Any = None

    def load(self) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(
            self.model_name, device=resolve_device(self.device), max_length=self.max_length
        )

    def predict(self, batch: list[Any]) -> list[Any]:
        pairs: list[tuple[str, str]] = []
        sizes: list[int] = []
        for item in batch:
            query = item.get("query") if isinstance(item, dict) else None
            documents = item.get("documents") if isinstance(item, dict) else None
            if not isinstance(query, str) or not isinstance(documents, list):
                raise ValueError("a rerank input is {'query': str, 'documents': [str, ...]}")
            if not all(isinstance(d, str) for d in documents):
                raise ValueError("rerank documents must be strings")
            pairs.extend((query, d) for d in documents)
            sizes.append(len(documents))
        scores = self.model.predict(pairs, batch_size=max(1, len(pairs))) if pairs else []
        outputs, start = [], 0
        for n in sizes:
            outputs.append([float(s) for s in scores[start : start + n]])
            start += n
        return outputs
