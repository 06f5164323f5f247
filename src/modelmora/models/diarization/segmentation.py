"""Local speaker segmentation: pyannote segmentation-3.0 over sliding 10 s chunks.

For each chunk the network gives, per 16.875 ms frame, one of 7 powerset classes (nobody,
speaker 1, 2 or 3 alone, or a pair). Decoded, that is a ``(frames, 3)`` binary activity per
chunk: real speech detection (silence and noise are "nobody"), and up to two voices at once.
The three local speakers are only local: the same person may be speaker 1 in one chunk and
speaker 3 in the next; clustering their embeddings links them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelmora.models import check_device, resolve_device
from modelmora.models.diarization.weights import SEGMENTATION, weight_path
from modelmora.speech.audio import SAMPLE_RATE

__all__ = ["CHUNK_S", "FRAMES_PER_CHUNK", "FRAME_STEP_S", "Chunk", "Segmenter"]

logger = logging.getLogger(__name__)

CHUNK_S = 10.0
FRAME_STEP_S = 0.016875  # 270 samples
FRAME_DURATION_S = 0.0619375
FRAMES_PER_CHUNK = 589
LOCAL_SPEAKERS = 3
# Powerset classes in the network's order: {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}.
_POWERSET = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=bool
)


@dataclass
class Chunk:
    """One chunk's local segmentation.

    Attributes:
        start: the chunk's start in the recording, seconds.
        activity: ``(FRAMES_PER_CHUNK, 3)`` booleans, local speaker active per frame (frames
            past the end of the recording are all False).
    """

    start: float
    activity: np.ndarray


class Segmenter:
    """Runs segmentation-3.0 over a recording in overlapping chunks.

    Args:
        step: seconds between chunk starts (smaller: more overlap, more accurate, slower).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        batch_size: chunks per forward pass.
    """

    def __init__(self, step: float = 2.5, device: str = "cpu", batch_size: int = 8) -> None:
        if not 0 < step <= CHUNK_S:
            raise ValueError(f"need 0 < step <= {CHUNK_S}, got step={step}")
        self.step = step
        self.device = check_device(device)
        self.batch_size = batch_size
        self._model: Any = None

    def load(self) -> None:
        """Load the network (cheap if already loaded)."""
        if self._model is not None:
            return
        import torch

        from modelmora.models.diarization.networks import PyanNet

        payload = torch.load(weight_path(SEGMENTATION), map_location="cpu", weights_only=True)
        model = PyanNet()
        model.load_state_dict(payload["state_dict"], strict=True)
        self._model = model.eval().to(resolve_device(self.device))
        logger.info("loaded segmentation-3.0 on %s", self.device)

    def close(self) -> None:
        """Drop the network."""
        self._model = None

    def starts(self, duration: float) -> list[float]:
        """Chunk starts covering ``duration`` seconds (the last chunk ends at the end)."""
        if duration <= CHUNK_S:
            return [0.0]
        count = int(np.ceil((duration - CHUNK_S) / self.step))
        starts = [i * self.step for i in range(count)]
        return [*starts, duration - CHUNK_S]

    def chunks(self, wav: np.ndarray) -> Iterator[Chunk]:
        """Segment ``wav`` (16 kHz float32), one :class:`Chunk` at a time, in time order."""
        import torch

        self.load()
        size = int(CHUNK_S * SAMPLE_RATE)
        starts = self.starts(wav.size / SAMPLE_RATE)
        device = next(self._model.parameters()).device
        for first in range(0, len(starts), self.batch_size):
            group = starts[first : first + self.batch_size]
            batch = np.zeros((len(group), 1, size), dtype=np.float32)
            for row, start in enumerate(group):
                piece = wav[round(start * SAMPLE_RATE) :][:size]
                batch[row, 0, : piece.size] = piece
            with torch.inference_mode():
                logits = self._model(torch.from_numpy(batch).to(device)).cpu().numpy()
            for row, start in enumerate(group):
                activity = _POWERSET[np.argmax(logits[row], axis=-1)]
                valid = int((wav.size / SAMPLE_RATE - start) / FRAME_STEP_S)
                activity[max(valid, 0) :] = False
                yield Chunk(start, activity)
