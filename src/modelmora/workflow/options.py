"""Options of the batch transcription workflow, from a YAML config file and the command line.

Every option of ``modelmora transcribe`` is a field of :class:`TranscribeOptions`, under the same
name with ``_`` for ``-`` (``--compute-type`` is ``compute_type``). A config file holds any of
them; flags given on the command line override it::

    # modelmora.yaml
    output_dir: transcripts
    formats: [srt, json]
    model: small
    language: en
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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "DEVICES", "DIARIZERS", "TranscribeOptions", "load_options", "parse_size"]

#: Devices the workflow accepts.
DEVICES = ("auto", "cpu", "cuda")
#: Where the stages' models run: this machine, or a Ray cluster (the ``ray`` extra).
BACKENDS = ("local", "ray")
#: Diarization engines by name (``package.module:Class`` names one of your own). The engines
#: live in ``modelmora.models.diarization``; the orchestrator only checks the name.
DIARIZERS = ("default", "resemblyzer", "pyannote")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


@dataclass
class TranscribeOptions:
    """Everything that decides how a batch is transcribed (the CLI's options, one by one).

    Attributes:
        output_dir: where outputs, the report, the log and the resume state go.
        formats: output formats: ``all`` or some of ``txt srt vtt json tsv rttm``.
        model: a Whisper size name (``small``; downloaded by faster-whisper) or a local
            CTranslate2 folder; None for the bundled tiny.en (offline).
        language: a language code, or None to detect it per file.
        device: ``auto``, ``cpu`` or ``cuda`` (Whisper and the speaker encoder).
        compute_type: CTranslate2 compute type (``default``, ``int8``, ``float16``...).
        beam_size: Whisper's beam width.
        vad_filter: skip non-speech with Silero VAD before Whisper.
        diarize: label speakers.
        diarizer: the diarization engine: ``default`` (segmentation-3.0 + CAM++ + spectral
            clustering), ``resemblyzer``, ``pyannote`` (a pyannote.audio pipeline) or
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
        llm: a GGUF file, an ``http(s)://`` OpenAI-compatible server URL, or None for the
            bundled gemma-3 270M (a smoke model: it proves the plumbing, it summarizes poorly).
        llm_remote_model: the model name sent to a server (Ollama needs a real one).
        llm_n_ctx: the LLM's context in tokens (long transcripts are chunked to fit).
        llm_max_tokens: the longest summary (per chunk), in tokens.
        memory_budget: RSS cap of each stage's worker (``4G``, ``512M``); a worker that goes
            past it is killed and the file in flight fails. None for no cap.
        memory_report: write the memory report JSON here (see the README).
        threads: cap on each worker's numeric threads (None: the libraries' defaults).
        file_timeout: seconds one file may take in one stage before its worker is killed.
        overwrite: redo every stage instead of resuming from saved results.
        crash_on: fault injection for tests: the transcribe worker segfaults on files whose
            name matches this glob (default: ``$MODELMORA_CRASH_ON``).
        backend: ``local`` (workers on this machine) or ``ray`` (workers on a Ray cluster's
            nodes; outputs, report and resume state are the same).
        address: the Ray cluster to use (``host:6379``, ``ray://host:10001``, ``auto``);
            None: ``$RAY_ADDRESS``, else a Ray instance started on this machine for the batch.
    """

    output_dir: str = "."
    formats: str | list[str] = "all"
    model: str | None = None
    language: str | None = None
    device: str = "auto"
    compute_type: str = "default"
    beam_size: int = 5
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
    crash_on: str | None = field(default_factory=lambda: os.environ.get("MODELMORA_CRASH_ON"))
    backend: str = "local"
    address: str | None = None

    def validate(self) -> TranscribeOptions:
        """Check the values up front (before any file or worker is touched).

        Returns:
            ``self``.

        Raises:
            ValueError: a value out of range, naming the valid choices.
        """
        from modelmora.speech.transcript import parse_formats

        parse_formats(self.formats)
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}: use one of {', '.join(DEVICES)}")
        module, colon, cls = self.diarizer.partition(":")
        if self.diarizer not in DIARIZERS and not (colon and module and cls):
            raise ValueError(
                f"unknown diarizer {self.diarizer!r}: use one of {', '.join(DIARIZERS)} "
                "or 'package.module:Class'"
            )
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
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
        if self.backend == "ray":
            from modelmora.workflow.ray import INSTALL_HINT, ray_available

            if not ray_available():
                raise ValueError(INSTALL_HINT)

    def memory_budget_mb(self) -> float | None:
        """The memory budget in MB, or None without one."""
        return None if self.memory_budget is None else parse_size(self.memory_budget)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (for the report and the config file format); the token
        is masked."""
        data = dataclasses.asdict(self)
        if data.get("hf_token"):
            data["hf_token"] = "***"
        return data


def parse_size(text: str | float) -> float:
    """Parse a memory size (``512M``, ``4G``, ``1.5GiB``, ``2048`` = MB) into megabytes.

    Args:
        text: the size; a bare number means megabytes.

    Returns:
        Megabytes.

    Raises:
        ValueError: not a size (the message shows the accepted forms).
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _SIZE.match(text)
        if match is None:
            raise ValueError(
                f"bad memory size {text!r}: use a number of MB or one with a unit "
                "(512M, 4G, 1.5GiB, 1T)"
            )
        number, unit, suffix = match.groups()
        if unit:
            value = float(number) * _UNITS[unit.lower()]
        elif suffix:  # "100b": bytes
            value = float(number) / (1024 * 1024)
        else:  # a bare number: megabytes
            value = float(number)
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


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
