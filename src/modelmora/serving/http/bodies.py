"""The HTTP request bodies (pydantic models), and the check on model names in paths and bodies.

Unknown fields are ignored; a field that fails its check is answered 400 with the field as
``param`` (see :func:`modelmora.serving.http.errors.add_error_handlers`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelmora.serving.config import Priority
from modelmora.units import check_model_name

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "EmbeddingInput",
    "EmbeddingRequest",
    "JobRequest",
    "ModelName",
    "PredictRequest",
    "Priority",
    "RerankRequest",
    "check_name",
]

#: ``name`` if it is a valid model name (the registry's rule); else a ValueError stating it.
check_name = check_model_name


ModelName = Annotated[str, AfterValidator(check_name)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingInput(BaseModel):
    """One input of ``/v1/embeddings`` as an object (Jina's shape): a text or an image."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = Field(default=None, description="base64 or a data:image/...;base64 URL")

    def item(self) -> str | dict[str, str]:
        """What the worker gets: the text itself, or ``{"image": ...}``."""
        if (self.text is None) == (self.image is None):
            raise ValueError("an input object has exactly one of 'text' and 'image'")
        return self.text if self.text is not None else {"image": str(self.image)}


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: ModelName
    input: str | list[str | EmbeddingInput] = Field(
        description="a text, or a list of texts and {'text'} / {'image'} objects"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ChatMessage(_Body):
    """One chat message; ``content`` is text or a list of ``{"type": "text"}`` parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)


class PredictRequest(_Body):
    """``POST /api/v1/models/{name}/predict``: one input, answered synchronously."""

    input: Any
    priority: Priority = "normal"
    stream: bool = Field(
        default=False,
        description="answer server-sent events, one {'output': chunk} per chunk, then [DONE]",
    )


class RerankDocument(BaseModel):
    """A document given as an object (Cohere's and Jina's shape)."""

    text: str


class RerankRequest(_Body):
    """``POST /v1/rerank`` (the Cohere / Jina / TEI shape)."""

    model: ModelName
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False

    def texts(self) -> list[str]:
        """The documents' texts, in order."""
        return [d if isinstance(d, str) else d.text for d in self.documents]


class JobRequest(_Body):
    """``POST /api/v1/jobs``."""

    model: ModelName
    input: Any
    priority: Priority = "normal"
