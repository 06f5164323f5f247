"""Speaker diarization: who speaks when, with a speaker on every word and segment.

Data flow for one file::

    audio ──► speech frames (10 ms; WebRTC VAD + energy gate, short gaps closed)
          ──► sliding windows (1.5 s, hop 0.25 s) over the speech frames of each window
          ──► Resemblyzer d-vectors (256-d, L2-normalised; one forward pass per batch)
          ──► clustering (centred embeddings, agglomerative, cosine; speaker count by
              silhouette, or given)
          ──► re-segmentation: each frame takes the speaker whose centroid its covering
              windows resemble most (so turns follow the voice, not Whisper's segments)
          ──► turns (same-speaker runs, short pauses bridged)
          ──► words and segments labelled; a segment that changes speaker is split

Speakers are named ``SPEAKER_00``, ``SPEAKER_01``... in order of first appearance.
Resemblyzer ships its encoder weights, so this works offline; it runs on torch (CPU is fine:
a one-hour file takes about a minute).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import Adapter, Capabilities, check_device, resolve_device
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.transcript import Segment, Turn, Word

__all__ = ["DiarizerAdapter", "assign_speakers"]

logger = logging.getLogger(__name__)

_FRAME_S = 0.01  # Resemblyzer's mel hop: one frame per 10 ms
_FRAME = int(SAMPLE_RATE * _FRAME_S)


class DiarizerAdapter(Adapter):
    """Resemblyzer speaker embeddings + clustering, aligned to a Whisper transcript.

    Args:
        num_speakers: the exact number of speakers, or None to count them.
        min_speakers: the fewest speakers when counting (1 allows "everyone is one speaker").
        max_speakers: the most speakers when counting.
        device: torch device for the speaker encoder (``"cpu"``, ``"cuda"`` or ``"auto"``).
        window: embedding window length, seconds.
        hop: step between windows, seconds.
        min_gap: pauses shorter than this (seconds) inside one speaker's talk stay in the turn.

    Raises:
        ValueError: inconsistent speaker counts, an unknown device, or a bad window/hop.
    """

    # The speaker encoder is small: its GPU memory is not counted against the VRAM budget.
    capabilities = Capabilities(
        task="diarization",
        takes_device=True,
        frameworks=("resemblyzer", "torch", "webrtcvad", "sklearn.cluster"),
        vram_footprint_mb=0.0,
    )

    def __init__(
        self,
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 8,
        device: str = "cpu",
        window: float = 1.5,
        hop: float = 0.25,
        min_gap: float = 0.5,
    ) -> None:
        if num_speakers is not None and num_speakers < 1:
            raise ValueError(f"num_speakers must be at least 1, got {num_speakers}")
        if not 1 <= min_speakers <= max_speakers:
            raise ValueError(
                f"need 1 <= min_speakers <= max_speakers, got {min_speakers} and {max_speakers}"
            )
        check_device(device)
        if not 0 < hop <= window:
            raise ValueError(f"need 0 < hop <= window, got hop={hop} window={window}")
        self.num_speakers = num_speakers
        self.min_speakers = min_speakers
        self.max_speakers = max_speakers
        self.device = device
        self.window = window
        self.hop = hop
        self.min_gap = min_gap
        self._encoder: Any = None

    def load(self) -> None:
        """Load the Resemblyzer voice encoder (weights ship with the package).

        Raises:
            ModelLoadError: resemblyzer (or its webrtcvad/setuptools dependency) is missing.
        """
        try:
            with warnings.catch_warnings():
                # resemblyzer and webrtcvad import deprecated scipy/pkg_resources names: noise.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                from resemblyzer import VoiceEncoder
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot import resemblyzer ({exc}): pip install resemblyzer 'setuptools<81'"
            ) from exc
        device = resolve_device(self.device)
        self._encoder = VoiceEncoder(device=device, verbose=False)
        logger.info("loaded Resemblyzer voice encoder on %s", device)

    def predict(self, batch: list[Any]) -> list[Any]:
        """Diarize each item.

        Args:
            batch: items ``{"audio": path or 16 kHz float32 array, "segments": [...]}`` where
                segments are transcript segment dicts (whisperx shape; may be empty).

        Returns:
            One ``{"segments": [...], "speakers": [...], "turns": [[start, end, speaker]...]}``
            per item: segments labelled (and split where the speaker changes mid-segment).

        Raises:
            modelmora.speech.audio.AudioError: an item's file is not usable audio.
            ValueError: an item has no ``audio``.
        """
        results = []
        for item in batch:
            if not isinstance(item, dict) or "audio" not in item:
                raise ValueError("each diarizer input must be a dict with an 'audio' key")
            segments = [Segment.from_dict(s, i) for i, s in enumerate(item.get("segments") or [])]
            turns = self.diarize(item["audio"])
            labelled = assign_speakers(segments, turns)
            results.append(
                {
                    "segments": [segment.to_dict() for segment in labelled],
                    "speakers": _speakers(turns),
                    "turns": [[round(t.start, 3), round(t.end, 3), t.speaker] for t in turns],
                }
            )
        return results

    def diarize(self, audio: str | os.PathLike[str] | np.ndarray) -> list[Turn]:
        """Find the speaker turns of one file or 16 kHz float32 array.

        Returns:
            Turns in time order, speakers named by first appearance (none for silence).
        """
        if self._encoder is None:
            self.load()
        wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
        wav = _normalize_volume(wav)
        speech = speech_frames(wav)
        if not speech.any():
            return []
        starts, embeddings = self._embed_windows(wav, speech)
        if len(starts) == 0:
            # Too little speech for one window: one speaker, whoever it is.
            return _turns(np.where(speech, 0, -1), self.min_gap)
        labels = cluster_embeddings(
            embeddings, self.num_speakers, self.min_speakers, self.max_speakers
        )
        frame_labels = _resegment(speech, starts, embeddings, labels, self._window_frames)
        turns = _turns(frame_labels, self.min_gap)
        logger.debug(
            "diarized %.1f s: %d turns, %d speakers",
            wav.size / SAMPLE_RATE,
            len(turns),
            len(_speakers(turns)),
        )
        return turns

    @property
    def _window_frames(self) -> int:
        return round(self.window / _FRAME_S)

    def _embed_windows(self, wav: np.ndarray, speech: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embed every window holding enough speech; return (start frames, embeddings)."""
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        mel = wav_to_mel_spectrogram(wav)
        count = min(len(mel), len(speech))
        size, step = self._window_frames, max(1, round(self.hop / _FRAME_S))
        need = size // 3  # at least a third of the window must be speech
        starts, windows = [], []
        for start in range(0, max(1, count - size // 2), step):
            voiced = np.flatnonzero(speech[start : start + size]) + start
            if voiced.size >= need:
                starts.append(start)
                windows.append(mel[voiced])
        if not windows:
            return np.zeros(0, dtype=int), np.zeros((0, 256), dtype=np.float32)
        embeddings = []
        encoder = self._encoder
        with torch.no_grad():
            for group in _by_length(windows):
                tensor = torch.from_numpy(np.stack(group)).to(encoder.device)
                embeddings.append(encoder(tensor).cpu().numpy())
        order = np.argsort([i for group in _by_length_index(windows) for i in group])
        stacked = np.concatenate(embeddings)[order]
        return np.asarray(starts), stacked

    def close(self) -> None:
        """Drop the encoder."""
        self._encoder = None


def _by_length_index(windows: list[np.ndarray]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for index, window in enumerate(windows):
        groups.setdefault(len(window), []).append(index)
    return list(groups.values())


def _by_length(windows: list[np.ndarray]) -> list[list[np.ndarray]]:
    # The encoder takes a batch of equal-length mel windows; group windows by their length.
    return [[windows[i] for i in group] for group in _by_length_index(windows)]


def _normalize_volume(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raise quiet audio to ``target_dbfs`` RMS, as Resemblyzer's own preprocessing does."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms <= 1e-8:
        return wav
    gain = 10 ** ((target_dbfs - 20 * np.log10(rms)) / 20)
    return (wav * gain).astype(np.float32) if gain > 1 else wav


def speech_frames(wav: np.ndarray, gap: float = 0.2, shortest: float = 0.1) -> np.ndarray:
    """Mark each 10 ms frame as speech or not: WebRTC VAD, gated by energy, then smoothed.

    Args:
        wav: 16 kHz float32 samples.
        gap: non-speech runs shorter than this (seconds) between speech become speech.
        shortest: speech runs shorter than this (seconds) become non-speech.

    Returns:
        A boolean array, one entry per 10 ms frame.
    """
    count = wav.size // _FRAME
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = wav[: count * _FRAME].reshape(count, _FRAME)
    energy_db = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
    floor = np.percentile(energy_db, 10)
    peak = np.percentile(energy_db, 95)
    # Loud enough relative to this file's own noise floor and peak: robust to recording level.
    loud = energy_db > max(floor + 10.0, peak - 40.0, -75.0)
    voiced = _webrtc_vad(frames)
    speech = loud & voiced if voiced is not None else loud
    speech = _fill_runs(speech, value=False, shorter_than=round(gap / _FRAME_S))
    return _fill_runs(speech, value=True, shorter_than=round(shortest / _FRAME_S))


def _webrtc_vad(frames: np.ndarray, mode: int = 2) -> np.ndarray | None:
    try:
        import webrtcvad
    except ImportError:
        return None
    vad = webrtcvad.Vad(mode)
    pcm = (np.clip(frames, -1.0, 1.0) * 32767).astype("<i2")
    return np.array([vad.is_speech(row.tobytes(), SAMPLE_RATE) for row in pcm], dtype=bool)


def _fill_runs(mask: np.ndarray, value: bool, shorter_than: int) -> np.ndarray:
    """Flip interior runs of ``value`` shorter than ``shorter_than`` frames."""
    out = mask.copy()
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.concatenate(([0], edges, [mask.size]))
    for begin, end in pairwise(bounds):
        interior = begin > 0 and end < mask.size
        if mask[begin] == value and end - begin < shorter_than and (interior or value):
            out[begin:end] = not value
    return out


def cluster_embeddings(
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 8,
    same_voice: float = 0.9,
) -> np.ndarray:
    """Cluster L2-normalised speaker embeddings into speakers.

    The embeddings are centred first (the mean is subtracted, then each is re-normalised): what
    all windows of a recording share (room, microphone, noise) dominates raw d-vectors, and
    removing it leaves the differences between voices. Clustering is agglomerative (cosine,
    average linkage). With ``num_speakers`` given, that many clusters; otherwise every count
    from ``min_speakers`` to ``max_speakers`` is tried and the best silhouette wins. One speaker
    is chosen (when ``min_speakers`` allows it) if the best split's two largest clusters have
    raw centroids more alike than ``same_voice`` (cosine), or the split is barely a split
    (silhouette under 0.12).

    Args:
        embeddings: shape ``(n, d)``.
        num_speakers: the exact count, or None.
        min_speakers: the fewest speakers to try.
        max_speakers: the most speakers to try.
        same_voice: raw centroid cosine similarity above which two clusters are one voice.

    Returns:
        One integer label per embedding.
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    n = len(embeddings)
    if n < 3 or num_speakers == 1 or (num_speakers is None and max_speakers == 1):
        return np.zeros(n, dtype=int)
    centred = embeddings - embeddings.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True) + 1e-9

    def fit(k: int) -> np.ndarray:
        model = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average")
        return np.asarray(model.fit_predict(centred))

    if num_speakers is not None:
        return fit(min(num_speakers, n))
    best_labels, best_score = np.zeros(n, dtype=int), -1.0
    for k in range(max(2, min_speakers), min(max_speakers, n - 1) + 1):
        labels = fit(k)
        score = float(silhouette_score(centred, labels, metric="cosine"))
        logger.debug("speakers=%d silhouette=%.3f", k, score)
        if score > best_score:
            best_labels, best_score = labels, score
    if min_speakers <= 1 and _one_voice(embeddings, best_labels, best_score, same_voice):
        return np.zeros(n, dtype=int)
    return best_labels


def _one_voice(embeddings: np.ndarray, labels: np.ndarray, score: float, same: float) -> bool:
    """Whether the best split is really one speaker's own variation."""
    if score < 0.12:
        return True
    first, second = np.argsort(np.bincount(labels))[::-1][:2]
    centroids = [embeddings[labels == c].mean(axis=0) for c in (first, second)]
    a, b = (c / (np.linalg.norm(c) + 1e-9) for c in centroids)
    similarity = float(a @ b)
    logger.debug("two largest clusters: centroid similarity %.3f", similarity)
    return similarity > same


def _resegment(
    speech: np.ndarray,
    starts: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    size: int,
) -> np.ndarray:
    """Label every speech frame with the speaker its covering windows resemble most (-1: none)."""
    speakers = np.unique(labels)
    centroids = np.stack([embeddings[labels == s].mean(axis=0) for s in speakers])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-9
    similarity = embeddings @ centroids.T  # (windows, speakers)
    totals = np.zeros((speech.size, len(speakers)))
    weights = np.zeros(speech.size)
    # Triangular weights: a window speaks mostly for its middle, less for its edges.
    taper = 1.0 - np.abs(np.linspace(-1.0, 1.0, size)) * 0.9
    for start, row in zip(starts, similarity, strict=True):
        end = min(start + size, speech.size)
        totals[start:end] += taper[: end - start, None] * row[None, :]
        weights[start:end] += taper[: end - start]
    frame_labels = np.full(speech.size, -1)
    covered = speech & (weights > 0)
    frame_labels[covered] = speakers[np.argmax(totals[covered], axis=1)]
    # Speech no window covered (a lone short word) takes the nearest labelled frame's speaker.
    lonely = np.flatnonzero(speech & ~covered)
    known = np.flatnonzero(covered)
    if lonely.size and known.size:
        nearest = np.clip(np.searchsorted(known, lonely), 0, known.size - 1)
        frame_labels[lonely] = frame_labels[known[nearest]]
    return frame_labels


def _turns(frame_labels: np.ndarray, min_gap: float) -> list[Turn]:
    """Runs of one label as turns; same-speaker runs with a short pause between are merged."""
    runs: list[list[Any]] = []
    edges = np.flatnonzero(np.diff(frame_labels)) + 1
    bounds = np.concatenate(([0], edges, [frame_labels.size]))
    for begin, end in pairwise(bounds):
        label = int(frame_labels[begin])
        if label < 0:
            continue
        start, stop = begin * _FRAME_S, end * _FRAME_S
        if runs and runs[-1][2] == label and start - runs[-1][1] < min_gap:
            runs[-1][1] = stop
        else:
            runs.append([start, stop, label])
    names: dict[int, str] = {}
    for _, _, label in runs:
        names.setdefault(label, f"SPEAKER_{len(names):02d}")
    return [Turn(round(s, 3), round(e, 3), names[label]) for s, e, label in runs]


def _speakers(turns: list[Turn]) -> list[str]:
    return list(dict.fromkeys(turn.speaker for turn in turns))


def _speaker_at(start: float, end: float, turns: list[Turn]) -> str | None:
    """The speaker overlapping ``[start, end]`` the most, else the nearest turn's speaker."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    if overlap:
        return max(overlap, key=lambda speaker: overlap[speaker])
    middle = (start + end) / 2
    nearest = min(turns, key=lambda t: max(t.start - middle, middle - t.end, 0.0))
    return nearest.speaker


def assign_speakers(segments: list[Segment], turns: list[Turn]) -> list[Segment]:
    """Put a speaker on every word and segment; split segments where the speaker changes.

    Args:
        segments: transcript segments (words optional).
        turns: speaker turns.

    Returns:
        New segments, renumbered from 0. A segment with words is split at each change of its
        words' speaker; one without words takes the speaker it overlaps most.
    """
    labelled: list[Segment] = []
    for segment in segments:
        if not segment.words:
            speaker = _speaker_at(segment.start, segment.end, turns)
            labelled.append(replace(segment, speaker=speaker))
            continue
        words = [replace(w, speaker=_speaker_at(w.start, w.end, turns)) for w in segment.words]
        group: list[Word] = [words[0]]
        for word in words[1:]:
            if word.speaker != group[-1].speaker:
                labelled.append(_segment_of(segment, group))
                group = []
            group.append(word)
        labelled.append(_segment_of(segment, group))
    for index, segment in enumerate(labelled):
        segment.id = index
    return labelled


def _segment_of(parent: Segment, words: list[Word]) -> Segment:
    if len(words) == len(parent.words):
        return replace(parent, words=words, speaker=words[0].speaker)
    text = "".join(word.word for word in words)
    return Segment(parent.id, words[0].start, words[-1].end, text, words, words[0].speaker)
