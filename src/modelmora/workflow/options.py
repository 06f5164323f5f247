"""Options of the batch transcription workflow, from a YAML config file and the command line.

Every option of ``modelmora transcribe`` is a field of :class:`TranscribeOptions`, under the same
name with ``_`` for ``-`` (``--compute-type`` is ``compute_type``). A config file holds any of
them; flags given on the command line override it::

    # modelmora.yaml
    output_dir: transcripts
    formats: [srt, json]
    model: base
    language: en
    initial_prompt: "Attendees: Siobhan, Aoife. Project Kestrel."
    hotwords: Kestrel
    diarize: true
    diarizer: default               # default | resemblyzer | pyannote | package.module:Class
    max_speakers: 4
    summarize: true
    llm: http://localhost:11434     # an OpenAI-compatible server (Ollama here)
    llm_remote_model: llama3.2
    memory_budget: 6G

Pydantic validates the file (this is a config boundary); the engine itself takes the dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelmora.speech.formats import RenderOptions

from modelmora.units import check_device, parse_size_mb

__all__ = [
    "BACKENDS",
    "DIARIZERS",
    "INSTALL_HINT",
    "TranscribeOptions",
    "load_options",
    "ray_available",
]

#: Where the stages' models run: this machine, or a Ray cluster (the ``ray`` extra).
BACKENDS = ("local", "ray")
#: What to tell users who ask for the Ray backend without Ray installed.
INSTALL_HINT = "the ray backend needs Ray: pip install 'modelmora[ray]'"
#: Diarization engines by name (``package.module:Class`` names one of your own). The engines
#: live in ``modelmora.models.diarization``; the orchestrator only checks the name.
DIARIZERS = ("default", "resemblyzer", "pyannote")


def ray_available() -> bool:
    """True when Ray can be imported (the ``ray`` extra is installed)."""
    return importlib.util.find_spec("ray") is not None


@dataclass
class TranscribeOptions:
    """Everything that decides how a batch is transcribed (the CLI's options, one by one).

    Attributes:
        output_dir: where outputs, the report, the log and the resume state go.
        formats: output formats: ``all`` or some of ``txt srt vtt json tsv rttm``.
        model: a Whisper size name (``base``, ``tiny.en``: the packaged copy when installed,
            else downloaded by faster-whisper; ``small``, ``large-v3``...) or a local
            CTranslate2 folder; None for the default (``base``, packaged: offline).
        language: a language code, or None to detect it per file (the report gives the
            language found and its probability).
        device: ``auto``, ``cpu`` or ``cuda`` (Whisper and the speaker encoder).
        compute_type: CTranslate2 compute type (``default``, ``int8``, ``float16``...).
        beam_size: Whisper's beam width.
        batch_size: 1 decodes each file sequentially; more decodes that many 30 s chunks at
            once (faster-whisper's batched pipeline: faster on a GPU).
        initial_prompt: text Whisper sees as said before the audio (names, spellings, topic).
        hotwords: words Whisper is nudged towards throughout (names, jargon).
        vad_filter: skip non-speech with Silero VAD before Whisper.
        diarize: label speakers.
        diarizer: the diarization engine: ``default`` (segmentation-3.0 + CAM++ +
            agglomerative clustering), ``resemblyzer``, ``pyannote`` (a pyannote.audio pipeline) or
            ``package.module:Class``.
        diarizer_model: the ``pyannote`` engine's pipeline: a Hugging Face id or a local
            folder (default ``pyannote/speaker-diarization-3.1``).
        hf_token: Hugging Face token for gated pyannote pipelines (default ``$HF_TOKEN``).
        num_speakers: the exact speaker count, or None to find it.
        min_speakers: the fewest speakers to consider when counting.
        max_speakers: the most speakers to consider when counting.
        speakers: name speakers whose voices are enrolled in the speaker library.
        library: the speaker library folder (None: the default, under the cache folder);
            giving one turns ``speakers`` on.
        link: give the same voice the same label in every file of the batch.
        summarize: write ``<stem>.summary.md`` with an LLM summary.
        llm: a GGUF file, an ``http(s)://`` OpenAI-compatible server URL, a packaged name
            (``smollm2``, ``gemma3-270m``), or None for the packaged SmolLM2-135M-Instruct.
        llm_remote_model: the model name sent to a server (Ollama needs a real one).
        llm_n_ctx: the LLM's context in tokens (long transcripts are chunked to fit).
        llm_max_tokens: the longest summary (per chunk), in tokens.
        memory_budget: RSS cap of each stage's worker (``4G``, ``512M``); a worker that goes
            past it is killed and the file in flight fails. None for no cap.
        memory_report: write the memory report JSON here (see the README).
        threads: cap on each worker's numeric threads (None: the libraries' defaults).
        file_timeout: seconds one file may take in one stage before its worker is killed.
        overwrite: redo every stage instead of resuming from saved results.
        backend: ``local`` (workers on this machine) or ``ray`` (workers on a Ray cluster's
            nodes; outputs, report and resume state are the same).
        address: the Ray cluster to use (``host:6379``, ``ray://host:10001``, ``auto``);
            None: ``$RAY_ADDRESS``, else a Ray instance started on this machine for the batch.
        max_line_width, max_line_count, max_duration, min_duration, highlight_words: subtitle
            shaping for srt/vtt; txt_timestamps: ``[hh:mm:ss]`` per turn in txt; embed_audio:
            the html page embeds the recording (see ``modelmora.speech.formats.RenderOptions``).
    """

    output_dir: str = "."
    formats: str | list[str] = "all"
    model: str | None = None
    language: str | None = None
    device: str = "auto"
    compute_type: str = "default"
    beam_size: int = 5
    batch_size: int = 1
    initial_prompt: str | None = None
    hotwords: str | None = None
    vad_filter: bool = True
    diarize: bool = False
    diarizer: str = "default"
    diarizer_model: str | None = None
    hf_token: str | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    speakers: bool = False
    library: str | None = None
    link: bool = True
    summarize: bool = False
    llm: str | None = None
    llm_remote_model: str = "default"
    llm_n_ctx: int = 2048
    llm_max_tokens: int = 256
    memory_budget: str | None = None
    memory_report: str | None = None
    threads: int | None = None
    file_timeout: float = 3600.0
    overwrite: bool = False
    backend: str = "local"
    address: str | None = None
    max_line_width: int | None = None
    max_line_count: int | None = None
    max_duration: float | None = None
    min_duration: float | None = None
    highlight_words: bool = False
    txt_timestamps: bool = False
    embed_audio: bool = False

    def validate(self) -> TranscribeOptions:
        """Check the values up front (before any file or worker is touched).

        Returns:
            ``self``.

        Raises:
            ValueError: a value out of range, naming the valid choices.
        """
        from modelmora.speech.formats import parse_formats

        parse_formats(self.formats)
        self.render_options()
        check_device(self.device)
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        module, colon, cls = self.diarizer.partition(":")
        if self.diarizer not in DIARIZERS and not (colon and module and cls):
            raise ValueError(
                f"unknown diarizer {self.diarizer!r}: use one of {', '.join(DIARIZERS)} "
                "or 'package.module:Class'"
            )
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.num_speakers is not None and (self.min_speakers or self.max_speakers):
            raise ValueError("give either num_speakers or min_speakers/max_speakers, not both")
        low, high = self.min_speakers or 1, self.max_speakers or max(8, self.min_speakers or 1)
        if low > high:
            raise ValueError(f"min_speakers ({low}) is larger than max_speakers ({high})")
        if self.library is not None:
            self.speakers = True  # a library named is a library to use
        if self.speakers and not self.diarize:
            raise ValueError("naming speakers needs diarization: add --diarize (diarize: true)")
        if self.llm_max_tokens < 1 or self.llm_n_ctx < self.llm_max_tokens + 128:
            raise ValueError("need llm_max_tokens >= 1 and llm_n_ctx >= llm_max_tokens + 128")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.file_timeout <= 0:
            raise ValueError(f"file_timeout must be positive, got {self.file_timeout}")
        self.memory_budget_mb()
        self._validate_backend()
        return self

    def _validate_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.address is not None and self.backend != "ray":
            raise ValueError("address names a Ray cluster: use it with backend ray")
        if self.backend == "ray" and not ray_available():
            raise ValueError(INSTALL_HINT)

    def render_options(self, audio: str | None = None, summary: str | None = None) -> RenderOptions:
        """How the outputs are rendered, for the recording ``audio`` with its ``summary``.

        Raises:
            ValueError: a subtitle limit out of range.
        """
        from modelmora.speech.formats import RenderOptions

        shaping = ("max_line_width", "max_line_count", "max_duration", "min_duration")
        return RenderOptions(
            **{name: getattr(self, name) for name in shaping},
            highlight_words=self.highlight_words,
            txt_timestamps=self.txt_timestamps,
            audio=audio,
            embed_audio=self.embed_audio and audio is not None,
            summary=summary,
        )

    def memory_budget_mb(self) -> float | None:
        """The memory budget in MB, or None without one."""
        return None if self.memory_budget is None else parse_size_mb(self.memory_budget)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (for the report and the config file format); the token
        is masked."""
        data = dataclasses.asdict(self)
        if data.get("hf_token"):
            data["hf_token"] = "***"
        return data


def _read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {file} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {file} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {file} must hold a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_options(
    config: str | os.PathLike[str] | None = None, **overrides: Any
) -> TranscribeOptions:
    """Build the options from a YAML config file, then the overrides (None means "not given").

    Args:
        config: a YAML file holding any :class:`TranscribeOptions` fields, or None.
        **overrides: field values that win over the file (the command line's flags);
            a None value leaves the file's (or the default) value in place.

    Returns:
        The validated options.

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a value of the wrong
            type, or a value out of range.
    """
    import pydantic

    values = _read_config(config) if config is not None else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(TranscribeOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}: valid options are {', '.join(sorted(known))}"
        )
    try:
        options = pydantic.TypeAdapter(TranscribeOptions).validate_python(values, strict=False)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"bad option value: {problems}") from None
    return options.validate()
