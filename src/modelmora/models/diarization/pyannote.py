"""The ``pyannote`` engine: a pyannote.audio pipeline, from a Hugging Face id or a local folder.

For users with access to pyannote's gated pipelines (``pyannote/speaker-diarization-3.1``,
``pyannote/speaker-diarization-community-1``): pass a token with ``hf_token`` or ``HF_TOKEN``.
A local folder (or ``config.yaml``) loads without the network. pyannote.audio is an optional
dependency (``pip install pyannote.audio``); it is imported only in the worker. Its usage
metrics (``PYANNOTE_METRICS_ENABLED``) are off unless the user turns them on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import check_device, resolve_device
from modelmora.models.diarization.common import (
    AudioInput,
    Diarization,
    check_counts,
    name_by_appearance,
)
from modelmora.speech.audio import SAMPLE_RATE, load_audio

__all__ = ["DEFAULT_PIPELINE", "PyannoteEngine"]

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE = "pyannote/speaker-diarization-3.1"


class PyannoteEngine:
    """Runs a pyannote.audio speaker-diarization pipeline.

    Args:
        num_speakers: the exact count, or None to let the pipeline estimate it.
        min_speakers: the fewest speakers.
        max_speakers: the most.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        pipeline: a Hugging Face id, a local folder holding ``config.yaml``, or that file.
        hf_token: a Hugging Face token for gated pipelines (default: ``HF_TOKEN``).
    """

    def __init__(
        self,
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 8,
        device: str = "cpu",
        pipeline: str = DEFAULT_PIPELINE,
        hf_token: str | None = None,
    ) -> None:
        check_counts(num_speakers, min_speakers, max_speakers)
        self.num_speakers = num_speakers
        self.min_speakers = min_speakers
        self.max_speakers = max_speakers
        self.device = check_device(device)
        self.pipeline = pipeline
        self.hf_token = hf_token
        self._pipeline: Any = None

    def load(self) -> None:
        """Load the pipeline.

        Raises:
            ModelLoadError: pyannote.audio is missing, or the pipeline cannot be loaded (gated
                without a token, not found, or an incompatible version).
        """
        # pyannote.audio 4 sends usage metrics unless told not to: off unless the user set it.
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
        try:
            import torch
            from pyannote.audio import Pipeline
        except ImportError as exc:
            raise ModelLoadError(
                f"the pyannote engine needs pyannote.audio ({exc}): pip install pyannote.audio"
            ) from exc
        source = Path(self.pipeline)
        if source.is_dir():
            source = source / "config.yaml"
        token = self.hf_token or os.environ.get("HF_TOKEN")
        try:
            if source.is_file():
                pipeline = Pipeline.from_pretrained(source)
            else:
                pipeline = _from_hub(Pipeline, self.pipeline, token)
        except Exception as exc:  # pyannote raises many kinds; say what to do
            raise ModelLoadError(
                f"cannot load pyannote pipeline {self.pipeline!r} ({exc}): pass a local folder, "
                "or a Hugging Face id you have accepted the terms of, with --hf-token or HF_TOKEN"
            ) from exc
        if pipeline is None:
            raise ModelLoadError(
                f"pyannote pipeline {self.pipeline!r} is gated: accept its terms on Hugging Face "
                "and pass a token with --hf-token or HF_TOKEN"
            )
        pipeline.to(torch.device(resolve_device(self.device)))
        self._pipeline = pipeline
        logger.info("loaded pyannote pipeline %s", self.pipeline)

    def close(self) -> None:
        """Drop the pipeline."""
        self._pipeline = None

    def diarize(self, audio: AudioInput) -> Diarization:
        """Run the pipeline on one file or 16 kHz float32 array."""
        import torch

        if self._pipeline is None:
            self.load()
        wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
        counts: dict[str, int] = {}
        if self.num_speakers is not None:
            counts["num_speakers"] = self.num_speakers
        else:
            counts = {"min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        waveform = {"waveform": torch.from_numpy(wav)[None], "sample_rate": SAMPLE_RATE}
        output = self._pipeline(waveform, **counts)
        # pyannote.audio 4 returns an object with the annotation and per-speaker embeddings;
        # 3.x returns the annotation itself.
        annotation = getattr(output, "speaker_diarization", output)
        labels = list(annotation.labels())
        index = {label: i for i, label in enumerate(labels)}
        turns = [
            (float(seg.start), float(seg.end), index[label])
            for seg, _, label in annotation.itertracks(yield_label=True)
        ]
        vectors: dict[int, np.ndarray] = {}
        raw = getattr(output, "speaker_embeddings", None)
        if raw is not None and len(raw) == len(labels):
            for i, vector in enumerate(np.asarray(raw, dtype=np.float64)):
                norm = np.linalg.norm(vector)
                # A speaker heard only in overlap gets no embedding (zeros or NaN): none kept.
                if np.isfinite(norm) and norm > 1e-6:
                    vectors[i] = vector / norm
        named, embeddings = name_by_appearance(turns, vectors)
        return Diarization(named, embeddings, f"pyannote:{self.pipeline}" if embeddings else None)


def _from_hub(pipeline_class: Any, name: str, token: str | None) -> Any:
    """``Pipeline.from_pretrained`` across pyannote.audio versions (``token`` from 4.0 on)."""
    try:
        return pipeline_class.from_pretrained(name, token=token)
    except TypeError:
        return pipeline_class.from_pretrained(name, use_auth_token=token)
