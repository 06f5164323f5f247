"""Synthesize a multi-speaker conversation with espeak-ng: wav + reference RTTM + text.

Usage::

    python scripts/make_conversation.py examples/conversation.wav            # the meeting
    python scripts/make_conversation.py /tmp/standup.wav --speakers 3        # three people
    python scripts/make_conversation.py out.wav --script dialogue.txt        # your own lines

A script file has one turn per line, ``N: text`` with N the speaker index (0, 1, 2...).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from modelmora.testing.conversation import (
    DEFAULT_VOICES,
    MEETING_SCRIPT,
    THREE_SPEAKER_SCRIPT,
    make_conversation,
)


def _read_script(path: Path) -> list[tuple[int, str]]:
    turns = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        speaker, sep, text = line.partition(":")
        if not sep or not speaker.strip().isdigit():
            raise SystemExit(f"{path}:{number}: expected 'N: text'")
        turns.append((int(speaker), text.strip()))
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the wav file to write")
    parser.add_argument(
        "--speakers",
        type=int,
        choices=(2, 3),
        default=2,
        help="built-in script: 2 (a planning meeting) or 3 (a stand-up)",
    )
    parser.add_argument("--script", type=Path, help="a script file of 'N: text' lines")
    parser.add_argument("--pause", type=float, default=0.6, help="seconds between turns")
    parser.add_argument("--noise", type=float, default=0.0, help="white noise std (0: none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.script:
        turns = _read_script(args.script)
    else:
        turns = list(MEETING_SCRIPT if args.speakers == 2 else THREE_SPEAKER_SCRIPT)
    conversation = make_conversation(
        args.output, turns, DEFAULT_VOICES, pause=args.pause, noise=args.noise
    )
    print(
        f"{conversation.wav}  {conversation.duration:.1f} s, {conversation.num_speakers} speakers"
    )
    print(conversation.rttm)
    print(conversation.txt)


if __name__ == "__main__":
    main()
