"""Peer servers for ``modelmora bench peers``: each one a small program that serves the same
sentence-embedding model with its own dynamic batching, started as its own process.

They import their server framework (LitServe, Ray Serve) and sentence-transformers at start:
install them with ``pip install "modelmora[bench-peers]"``.
"""

from __future__ import annotations

import argparse

__all__ = ["server_arguments"]


def server_arguments(description: str | None) -> argparse.Namespace:
    """The command line every peer server takes: port, model folder, batching settings."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    return parser.parse_args()
