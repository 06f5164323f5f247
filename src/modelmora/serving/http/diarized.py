"""``response_format=diarized_json`` of ``/v1/audio/transcriptions``: speaker-labelled segments
in OpenAI's shape (what its diarizing transcription model answers)::

    {"task": "transcribe", "duration": 42.7, "text": "...",
     "segments": [{"type": "transcript.text.segment", "id": "seg_0", "start": 0.0,
                   "end": 3.2, "text": "Hello.", "speaker": "A"}, ...],
     "usage": {"type": "duration", "seconds": 43}}

The transcription model's entry names its diarizer (``diarizer: NAME``, another model of the
registry): the whisper worker transcribes, then the diarizer worker labels the segments, each
under the scheduler's budget like any request. Speakers are ``A``, ``B``... in order of first
appearance, unless the diarizer names them.

Speaker naming: ``known_speaker_names[]`` with ``known_speaker_references[]`` (audio data
URLs, as OpenAI takes them) are handed to the diarizer as ``known_speakers: [{"name",
"audio"}]`` in its input; a diarizer that matches voices to them returns those names as the
segments' speakers, and they are answered as they are. The built-in diarizer does not match
voices (yet): it ignores them, and the speakers stay ``A``, ``B``...
"""

from __future__ import annotations

import math
import string
from typing import Any

from modelmora.serving.http.errors import ApiError

__all__ = ["DIARIZED", "diarized_json", "diarizer_input", "known_speakers"]

#: The response format answered by this module.
DIARIZED = "diarized_json"


def known_speakers(names: list[str], references: list[str]) -> list[dict[str, str]]:
    """``known_speaker_names[]`` and ``known_speaker_references[]`` paired, checked.

    Raises:
        ApiError: 400 when the lists differ in length, a name is empty or a reference is not
            an audio data URL.
    """
    if len(names) != len(references):
        raise ApiError(
            400,
            f"{len(names)} known_speaker_names[] but {len(references)} "
            "known_speaker_references[]: give one reference per name",
            param="known_speaker_references[]",
        )
    pairs = []
    for name, ref in zip(names, references, strict=True):
        if not name.strip():
            raise ApiError(400, "a known speaker name is empty", param="known_speaker_names[]")
        if not ref.startswith("data:") or ";base64," not in ref:
            raise ApiError(
                400,
                f"the reference of {name!r} must be an audio data URL (data:audio/wav;base64,...)",
                param="known_speaker_references[]",
            )
        pairs.append({"name": name.strip(), "audio": ref})
    return pairs


def diarizer_input(audio: str, transcript: dict[str, Any], known: list[dict[str, str]]) -> Any:
    """The diarizer worker's input: the audio, the transcript's segments, the known speakers."""
    item: dict[str, Any] = {"audio": audio, "segments": transcript.get("segments") or []}
    if known:
        item["known_speakers"] = known
    return item


def _letters(index: int) -> str:
    letters = string.ascii_uppercase
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = letters[rest] + label
    return label


def diarized_json(
    transcript: dict[str, Any], diarized: dict[str, Any], known: list[dict[str, str]]
) -> dict[str, Any]:
    """The ``diarized_json`` body from the transcript and the diarizer's labelled segments."""
    names = {k["name"] for k in known}
    labels: dict[str, str] = {}
    segments = []
    for i, seg in enumerate(diarized.get("segments") or []):
        raw = seg.get("speaker")
        if raw is None:
            speaker = "unknown"
        elif raw in names:
            speaker = raw
        else:
            speaker = labels.setdefault(raw, _letters(len(labels)))
        segments.append(
            {
                "type": "transcript.text.segment",
                "id": f"seg_{i}",
                "start": round(float(seg["start"]), 3),
                "end": round(float(seg["end"]), 3),
                "text": str(seg.get("text", "")).strip(),
                "speaker": speaker,
            }
        )
    duration = float(transcript.get("duration") or 0.0)
    text = " ".join(str(s["text"]) for s in segments if s["text"])
    return {
        "task": "transcribe",
        "duration": round(duration, 3),
        "text": text,
        "segments": segments,
        "usage": {"type": "duration", "seconds": math.ceil(duration)},
    }
