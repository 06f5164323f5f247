"""The batch transcription workflow: options, stage-major engine (local or Ray), report, run log,
and the in-process API for debugging.
"""
