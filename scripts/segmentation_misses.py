"""Where the default engine's missed speech comes from: segmentation-3.0 alone, no clustering.

For every ``DIR/<stem>.wav`` with a reference (as ``modelmora bench diarization`` finds it),
the segmentation network runs over the same 10 s chunks every 2.5 s as the engine, and each
frame is scored against the reference two ways (seconds, summed over the files):

- **speech**: is anyone talking? The engine's rule (most chunks' argmax class is not
  silence) beside a threshold on the chunks' mean probability of silence, at several values.
- **count**: how many people talk (capped at two, as the engine reconstructs at most two)?
  The engine's rule (chunks' mean argmax count, rounded) beside the rounded mean *expected*
  count of the powerset probabilities. Missed here is speaker time the count leaves out
  (undetected speech included); false alarm is speaker time it adds.

Printed as JSON. Usage::

    python scripts/segmentation_misses.py path/to/ami
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folder: Path) -> dict[str, object]:
    import torch

    from modelmora.bench.diarization import references
    from modelmora.models.diarization.segmentation import (
        _POWERSET,
        CHUNK_S,
        FRAME_DURATION_S,
        FRAME_STEP_S,
        FRAMES_PER_CHUNK,
        Segmenter,
    )
    from modelmora.speech.audio import SAMPLE_RATE, load_audio

    files = sorted(folder.glob("*.wav"))
    refs = references(folder, [f.stem for f in files])
    segmenter = Segmenter()
    segmenter.load()
    model = segmenter._model
    voices = _POWERSET.sum(axis=1)
    thresholds = (0.5, 0.6, 0.7, 0.85)
    speech = {name: [0.0, 0.0] for name in ["argmax", *[f"p_silence<{t}" for t in thresholds]]}
    count = {"argmax": [0.0, 0.0], "expected": [0.0, 0.0]}
    size = int(CHUNK_S * SAMPLE_RATE)
    for path in files:
        wav = load_audio(path)
        total = int(np.ceil(wav.size / SAMPLE_RATE / FRAME_STEP_S))
        silence, cover, hard, soft, talk = (np.zeros(total) for _ in range(5))
        for start in segmenter.starts(wav.size / SAMPLE_RATE):
            piece = np.zeros((1, 1, size), dtype=np.float32)
            part = wav[round(start * SAMPLE_RATE) :][:size]
            piece[0, 0, : part.size] = part
            with torch.inference_mode():
                logits = model(torch.from_numpy(piece)).numpy()[0]
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            offset = round(start / FRAME_STEP_S)
            end = min(offset + FRAMES_PER_CHUNK, total)
            span = end - offset
            silence[offset:end] += prob[:span, 0]
            talk[offset:end] += (np.argmax(logits, axis=1) != 0)[:span]
            hard[offset:end] += voices[np.argmax(logits, axis=1)][:span]
            soft[offset:end] += (prob @ voices)[:span]
            cover[offset:end] += 1
        for series in (silence, talk, hard, soft):
            series /= np.maximum(cover, 1)
        centre = np.arange(total) * FRAME_STEP_S + FRAME_DURATION_S / 2
        people = np.zeros(total)
        for turn in refs[path.stem]:
            people += (centre >= turn.start) & (centre < turn.end)
        said = people > 0
        rules = {"argmax": talk >= 0.5} | {f"p_silence<{t}": silence < t for t in thresholds}
        for name, heard in rules.items():
            speech[name][0] += float((said & ~heard).sum() * FRAME_STEP_S)
            speech[name][1] += float((heard & ~said).sum() * FRAME_STEP_S)
        truth = np.minimum(people, 2)
        for name, mean in (("argmax", hard), ("expected", soft)):
            found = np.minimum(np.rint(mean), 2)
            count[name][0] += float(np.maximum(truth - found, 0).sum() * FRAME_STEP_S)
            count[name][1] += float(np.maximum(found - truth, 0).sum() * FRAME_STEP_S)

    def table(rows: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {
            k: {"missed_s": round(v[0], 1), "false_alarm_s": round(v[1], 1)}
            for k, v in rows.items()
        }

    return {"files": len(files), "speech": table(speech), "count": table(count)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/segmentation_misses.py DIR")
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
