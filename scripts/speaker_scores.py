"""The score distributions behind the speaker naming and linking thresholds (docs/speakers.md).

Every reference speaker (cut at the reference turns) of the AMI excerpts and of the generated
conversations of ``modelmora bench speakers`` is embedded as enrollment embeds a clip (CAM++,
silences cut), then named by :func:`modelmora.speech.identify.identify`, which builds the
s-norm cohort as a batch does. Printed as JSON, per data set: for each speaker whose voice is
enrolled, the decision's score, margin and cosine similarity and whether the closest voice was
their own (``genuine``); for each speaker who is not enrolled, the same for the closest
enrolled voice (``impostor``); and how many of each the thresholds name.

- AMI: the nine excerpts form one batch; for every ordered pair of excerpts (A, B), everyone
  with at least 3 s of speech in A is enrolled, and the speakers of B are named.
- Generated: the bench's eight enrolled voices and eight conversations (four strangers).

Linking (``linking``): the same reference speakers, each batch scored by
:func:`modelmora.speech.linking.link_scores` and linked by ``link_speakers`` as a batch is
(speakers who talk under 2 s left out): for every same-person pair across two files its score
and cosine (``genuine``); for every speaker and every other file where someone else is closest,
the best score among that file's other people (``impostor``: the chances of a false link); and
how many pairs the linking got right. Batches: the nine AMI excerpts, the same cut in halves
(18 files: more same-person pairs), and the eight generated conversations.

Usage::

    python scripts/speaker_scores.py --ami-dir path/to/ami [--audio-dir CACHE] [--threads 1]
        [--save-batches FILE]     # the embedded batches, for linking.py without the model
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelmora.bench.speakers import (
    _ENROLLED,
    _LINES,
    _MONOLOGUE,
    _conversations,
    _rttm_by_file,
    _voices,
)
from modelmora.models.voiceprint import model_key, speech_only
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.identify import identify, talk_seconds
from modelmora.speech.linking import link_scores, link_speakers
from modelmora.speech.speakers import (
    MIN_ENROLL_SPEECH_S,
    MIN_SPEAKER_S,
    SpeakerLibrary,
    thresholds_for,
)
from modelmora.speech.transcript import Transcript, Turn


def _embed(embedder: Any, wav: np.ndarray, spans: list[tuple[float, float]]) -> tuple[Any, float]:
    """Enrollment's embedding of ``spans`` of ``wav`` and its seconds of speech."""
    pieces = [wav[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] for a, b in spans]
    speech = speech_only(np.concatenate(pieces))
    if speech.size < SAMPLE_RATE // 10:
        return None, 0.0
    return embedder.embed(speech[: 90 * SAMPLE_RATE]).tolist(), speech.size / SAMPLE_RATE


def _reference(embedder: Any, wav_path: Path, turns: list[Turn]) -> tuple[Transcript, dict]:
    """A transcript of the reference speakers (embedded from their turns), and their speech."""
    wav = load_audio(str(wav_path))
    embeddings, speech = {}, {}
    for label in sorted({t.speaker for t in turns}):
        vector, seconds = _embed(
            embedder, wav, [(t.start, t.end) for t in turns if t.speaker == label]
        )
        if vector is not None:
            embeddings[label], speech[label] = vector, seconds
    transcript = Transcript(
        turns=sorted(turns, key=lambda t: t.start),
        speaker_embeddings=embeddings,
        embedding_model=model_key(embedder),
    )
    return transcript, speech


def _decisions(
    before: Transcript, named: Transcript, own: dict[str, str]
) -> tuple[list[dict], list[dict]]:
    """Split one named transcript's decisions into genuine and impostor cases."""
    genuine, impostor = [], []
    relabelled = {a.speaker: b.speaker for a, b in zip(before.turns, named.turns, strict=True)}
    for label, new in relabelled.items():
        record = named.speaker_identities.get(new)
        if record is None or record.get("too_little_speech") or record.get("closest") is None:
            continue
        row = {k: record.get(k) for k in ("name", "closest", "similarity", "score", "margin")}
        row["speaker"] = label
        (genuine if label in own.values() else impostor).append(row)
    return genuine, impostor


def _summary(genuine: list[dict], impostor: list[dict]) -> dict[str, Any]:
    right = sum(1 for g in genuine if g["name"] is not None and g["name"] == g["closest"])
    own = [g for g in genuine if g["closest"] == g["speaker"]]
    return {
        "genuine_cases": len(genuine),
        "named_right": right,
        "impostor_cases": len(impostor),
        "impostors_named": sum(1 for i in impostor if i["name"] is not None),
        "genuine_scores": sorted(g["score"] for g in own if g["score"] is not None),
        "genuine_margins": sorted(g["margin"] for g in own if g["margin"] is not None),
        "genuine_similarities": sorted(g["similarity"] for g in own),
        "impostor_scores": sorted(i["score"] for i in impostor if i["score"] is not None),
        "impostor_margins": sorted(i["margin"] for i in impostor if i["margin"] is not None),
        "impostor_similarities": sorted(i["similarity"] for i in impostor),
    }


def ami(embedder: Any, folder: Path, work: Path) -> tuple[dict[str, Any], list[Transcript]]:
    """Every ordered pair of the excerpts: A's speakers enrolled, B's named (one batch)."""
    references = _rttm_by_file(folder / "ami.rttm")
    stems = sorted(references)
    batch, speech = {}, {}
    for stem in stems:
        batch[stem], speech[stem] = _reference(embedder, folder / f"{stem}.wav", references[stem])
    genuine: list[dict] = []
    impostor: list[dict] = []
    for source in stems:
        library = SpeakerLibrary(work / f"ami-{source}")
        enrolled = {
            label: label
            for label, seconds in speech[source].items()
            if seconds >= MIN_ENROLL_SPEECH_S
        }
        for label in enrolled:
            vector = batch[source].speaker_embeddings[label]
            library.add(
                label, batch[source].embedding_model or "", [vector], [speech[source][label]]
            )
        if not enrolled:
            continue
        named = identify([batch[s] for s in stems], library, link=False).transcripts
        for stem, transcript in zip(stems, named, strict=True):
            if stem != source:
                mine, others = _decisions(batch[stem], transcript, enrolled)
                genuine += mine
                impostor += others
    return _summary(genuine, impostor), [batch[s] for s in stems]


def generated(embedder: Any, audio: Path, work: Path) -> tuple[dict[str, Any], list[Transcript]]:
    """The bench's generated voices: eight enrolled, named in eight conversations."""
    from modelmora.testing.conversation import make_conversation

    voices = _voices()
    audio.mkdir(parents=True, exist_ok=True)
    library = SpeakerLibrary(work / "generated")
    for index in range(_ENROLLED):
        clip = make_conversation(audio / f"enroll-{index}.wav", [(0, _MONOLOGUE)], [voices[index]])
        wav = load_audio(str(clip.wav))
        vector, seconds = _embed(embedder, wav, [(0.0, wav.size / SAMPLE_RATE)])
        library.add(f"person-{index}", model_key(embedder), [vector], [seconds])
    transcripts, owners = [], []
    for number, talkers in enumerate(_conversations()):
        script = [(i % len(talkers), line) for i, line in enumerate(_LINES)]
        conv = make_conversation(
            audio / f"conversation-{number}.wav", script, [voices[p] for p in talkers]
        )
        turns = [Turn(t.start, t.end, f"person-{talkers[int(t.speaker[3:])]}") for t in conv.turns]
        transcripts.append(_reference(embedder, conv.wav, turns)[0])
        owners.append({f"person-{p}": f"person-{p}" for p in talkers if p < _ENROLLED})
    genuine: list[dict] = []
    impostor: list[dict] = []
    named = identify(transcripts, library, link=False).transcripts
    for before, transcript, own in zip(transcripts, named, owners, strict=True):
        mine, others = _decisions(before, transcript, own)
        genuine += mine
        impostor += others
    return _summary(genuine, impostor), transcripts


def halves(embedder: Any, folder: Path) -> list[Transcript]:
    """Each AMI excerpt cut at its middle into two files, each embedded on its own."""
    out = []
    for stem, turns in sorted(_rttm_by_file(folder / "ami.rttm").items()):
        end = max(t.end for t in turns)
        for lo, hi in ((0.0, end / 2), (end / 2, end)):
            part = [
                Turn(max(t.start, lo), min(t.end, hi), t.speaker)
                for t in turns
                if t.end > lo and t.start < hi
            ]
            out.append(_reference(embedder, folder / f"{stem}.wav", part)[0])
    return out


def linking(batch: list[Transcript]) -> dict[str, Any]:
    """Linking's score distributions and outcome on one batch (labels: the true people)."""
    files = [
        {label: v for label, v in t.speaker_embeddings.items() if talk.get(label, 0.0) >= s}
        for t, talk, s in ((t, talk_seconds(t), MIN_SPEAKER_S) for t in batch)
    ]
    scores = link_scores(files)
    links, _ = link_speakers(files, thresholds_for(batch[0].embedding_model or ""))
    score = scores.cosine if scores.score is None else scores.score
    genuine: list[list[float]] = []
    impostor: list[list[float]] = []
    same = same_ok = apart = apart_ok = 0
    for i, (file_a, person) in enumerate(scores.keys):
        for file_b in range(len(files)):
            cols = [j for j, (f, _) in enumerate(scores.keys) if f == file_b]
            if file_b == file_a or not cols:
                continue
            wrong = [j for j in cols if scores.keys[j][1] != person]
            if wrong:
                j = max(wrong, key=lambda j: score[i, j])
                impostor.append(
                    [round(float(score[i, j]), 3), round(float(scores.cosine[i, j]), 3)]
                )
            if file_b < file_a:
                continue
            for j in cols:
                together = links[file_a][person] == links[file_b][scores.keys[j][1]]
                if scores.keys[j][1] == person:
                    same, same_ok = same + 1, same_ok + together
                    genuine.append(
                        [round(float(score[i, j]), 3), round(float(scores.cosine[i, j]), 3)]
                    )
                else:
                    apart, apart_ok = apart + 1, apart_ok + (not together)
    ranked = sorted(s for s, _ in impostor)
    return {
        "files": len(files),
        "speakers": len(scores.keys),
        "normalised": scores.score is not None,
        "cohort_min": scores.cohort,
        "genuine_score_cosine": sorted(genuine),
        "impostor_cases": len(impostor),
        "impostor_score_p95": ranked[int(0.95 * (len(ranked) - 1))] if ranked else None,
        "impostor_score_max": ranked[-1] if ranked else None,
        "impostor_top_score_cosine": sorted(impostor)[-10:],
        "same_person_linked": [same_ok, same],
        "different_people_apart": [apart_ok, apart],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ami-dir", type=Path, required=True)
    parser.add_argument("--audio-dir", type=Path, default=None, help="generated voices cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-batches", type=Path, default=None, help="embedded batches (JSON)")
    args = parser.parse_args()
    import torch

    from modelmora.models.diarization.embeddings import SpeakerEmbedder

    torch.set_num_threads(args.threads)
    embedder = SpeakerEmbedder()
    embedder.load()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ami_naming, ami_batch = ami(embedder, args.ami_dir, work)
        gen_naming, gen_batch = generated(embedder, args.audio_dir or work / "audio", work)
        batches = {"ami": ami_batch, "ami_halves": halves(embedder, args.ami_dir)}
        batches["generated"] = gen_batch
        result = {
            "model": model_key(embedder),
            "thresholds": thresholds_for(model_key(embedder)).__dict__,
            "ami": ami_naming,
            "generated": gen_naming,
            "linking": {name: linking(batch) for name, batch in batches.items()},
        }
    if args.save_batches:
        saved = {name: [t.to_dict() for t in batch] for name, batch in batches.items()}
        args.save_batches.write_text(json.dumps(saved), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
