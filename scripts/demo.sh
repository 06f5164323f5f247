#!/usr/bin/env bash
# Set up, then run the main job on the bundled two-speaker example conversation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/modelmora transcribe examples/conversation.wav -o out/example \
    --diarize --summarize --memory-report out/example/memory.json "$@"
echo
echo "outputs in out/example:"
ls -l out/example
echo
cat out/example/conversation.txt
echo
cat out/example/conversation.summary.md
