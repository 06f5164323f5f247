"""Peer servers for ``modelmora bench peers``: each one a small program that serves the same
sentence-embedding model with its own dynamic batching, started as its own process.

They import their server framework (LitServe, Ray Serve) and sentence-transformers at start:
install them with ``pip install "modelmora[bench-peers]"``.
"""
